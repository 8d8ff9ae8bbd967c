"""Feast access shared by the pipeline, training, evaluation and the server: user context (history, counts,
tastes) and the candidates' first-stage signals (item attributes, routed models' price and quality).

    build_feature_tables("data/ml-100k", repo)     # parquet sources from dataset folders (recommendation, routing)
    apply(repo); materialize(repo)                 # register the definitions, load the online store (SQLite)
    UserFeatures(repo).history("196")              # -> ["Kolya (1996)", ...] or None for an unknown user
    with_candidate_features(sources, workdir)      # instances whose candidates carry features (offline store)

Candidate features are computed from a dataset's own training split and are point-in-time correct: a
recommendation item's `ratings` and `mean_rating` count the training users' interactions strictly before the
instance's target (each feature row is stamped one second after the interaction it counts; Feast's
point-in-time join then sees only earlier ones); data without timestamps (LLMRank, RouterBench) is stamped with
a fixed time before every instance, from training rows only (histories, not targets; training queries only).
Training and evaluation read them from the offline store (`get_historical_features`), the server from the online
store (`CandidateFeatures.lookup`); `iranker.prompts.candidate_text` renders them the same way everywhere.

The repository is `feature_repo/` (definitions.py + feature_store.yaml); `$IRANKER_FEATURE_REPO` or `repo=` picks
another, e.g. a copy whose feature_store.yaml points at Redis on a cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from iranker.data.base import DataError

log = logging.getLogger(__name__)

FEATURE_VIEWS = ("user_context", "item_attributes", "model_quality", "model_task_quality")
USER_FEATURES = ("history_titles", "history_item_ids", "n_interactions", "mean_rating", "favourite_classes")
# the candidate-feature view of each scenario, its entity key and the CandidateFeatures fields it holds
CANDIDATE_VIEWS = {"recommendation": ("item_attributes", "item_id", ("ratings", "mean_rating", "classes")),
                   "routing": ("model_quality", "model_id", ("price", "quality"))}
# routing per task family: a request or instance that names its `task` sees the models' price and quality on that
# family where the training split has it (else the overall figures above)
TASK_VIEW = "model_task_quality"
# a family's figures are kept from this many training queries of a model on it: from fewer, a training instance's own
# outcome would be much of its feature, which serving never shows (the overall figures stand in)
MIN_TASK_QUERIES = 5
# Rows of data without timestamps (e.g. LLMRank files) are stamped with this fixed time, so that builds repeat;
# instances without a time of their own are looked up just after it.
UNDATED = datetime(2000, 1, 1, tzinfo=timezone.utc)
AFTER_UNDATED = UNDATED + timedelta(days=1)
SERVED_DATASETS = "candidate_datasets.json"
USER_PUSH_SOURCE = "user_context_push"  # feature_repo/definitions.py: chosen items reach the online store through it
HISTORY_ITEMS = 20  # the recent items a user's context keeps


def default_repo() -> Path:
    env = os.environ.get("IRANKER_FEATURE_REPO")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "feature_repo"


def _check_repo(repo: Path) -> Path:
    repo = Path(repo)
    if not (repo / "feature_store.yaml").exists():
        raise DataError(f"{repo}: not a Feast repository (no feature_store.yaml); pass --repo or set "
                        "IRANKER_FEATURE_REPO")
    return repo


def build_feature_tables(data_dir: str | Path | Sequence[str | Path], repo: str | Path | None = None,
                         history: int = HISTORY_ITEMS, n_classes: int = 3) -> dict[str, pd.DataFrame]:
    """Write the parquet sources of the feature views from dataset folders: the user context from the (first)
    recommendation folder, candidate features from every recommendation and routing folder (passage candidates
    carry theirs in the data)."""
    from iranker.data import load_dataset_instances, load_tables, read_manifest

    repo = _check_repo(repo or default_repo())
    folders = [data_dir] if isinstance(data_dir, str | Path) else list(data_dir)
    scenarios = {str(f): read_manifest(f).get("scenario") for f in folders}
    rec = [f for f in folders if scenarios[str(f)] == "recommendation"]
    if not rec:
        raise DataError(f"{', '.join(map(str, folders))}: user features come from recommendation data; no "
                        f"recommendation dataset folder among them (scenarios: {', '.join(map(str, scenarios.values()))})")
    builds = [(load_tables(f), load_dataset_instances(f), read_manifest(f)) for f in folders
              if scenarios[str(f)] in CANDIDATE_VIEWS]
    out = {"user_context": _user_context(rec[0], history, n_classes), **candidate_sources(builds)}
    served: dict[str, str] = {}
    for _, _, manifest in builds:
        served.setdefault(manifest["scenario"], manifest.get("dataset", ""))
    _write_sources(repo, out)
    # which dataset's figures the server shows for each scenario's candidates (the first folder of each)
    (repo / "data" / SERVED_DATASETS).write_text(json.dumps(served, indent=1, sort_keys=True) + "\n")
    return out


def served_datasets(repo: str | Path | None = None) -> dict[str, str]:
    """{scenario: dataset} whose candidate features the server looks up (written by `build_feature_tables`)."""
    path = _check_repo(repo or default_repo()) / "data" / SERVED_DATASETS
    return json.loads(path.read_text()) if path.exists() else {}


def _write_sources(repo: Path, frames: dict[str, pd.DataFrame]) -> None:
    (repo / "data").mkdir(exist_ok=True)
    for name, df in frames.items():
        tmp = repo / "data" / f".{name}.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, repo / "data" / f"{name}.parquet")


def _stamp(ts: float | None) -> datetime:
    return UNDATED if ts is None or pd.isna(ts) else datetime.fromtimestamp(float(ts), tz=timezone.utc)


def _user_context(data_dir, history: int, n_classes: int) -> pd.DataFrame:
    from iranker.data import load_tables, read_manifest
    from iranker.data.recommendation import item_text

    manifest = read_manifest(data_dir)
    tables = load_tables(data_dir)
    inter, items = tables["interactions"], tables["items"]
    with_classes = bool(manifest.get("params", {}).get("with_classes"))
    info = {r["item_id"]: r for r in items.to_dict("records")}
    texts = {i: item_text(r, with_classes) for i, r in info.items()}
    users = []
    ordered = inter.sort_values(["user_id", "position"], kind="stable")
    for u, g in ordered.groupby("user_id", sort=True):
        seq = g["item_id"].tolist()
        recent = seq[-history:]
        classes = Counter(c for i in seq for c in (info[i]["classes"].split("|") if info[i]["classes"] else []))
        users.append({
            "user_id": str(u), "event_timestamp": _stamp(g["timestamp"].max()),
            "history_titles": [texts[i] for i in recent], "history_item_ids": recent,
            "n_interactions": len(seq), "mean_rating": float(g["rating"].mean()) if g["rating"].notna().any()
            else float("nan"),
            "favourite_classes": [c for c, _ in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))[:n_classes]],
        })
    return pd.DataFrame(users)


_COLUMNS = {"item_attributes": ["dataset", "item_id", "event_timestamp", "title", "classes", "ratings",
                                "mean_rating"],
            "model_quality": ["dataset", "model_id", "event_timestamp", "price", "quality", "queries"],
            TASK_VIEW: ["dataset", "model_id", "task", "event_timestamp", "price", "quality", "queries"]}


def _empty(view: str) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="object") for c in _COLUMNS[view]})
    df["event_timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    return df


def _frame(rows: list[dict], view: str) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=_COLUMNS[view]).astype({"price": "float64"}) if rows else _empty(view)


def _concat(frames: list[pd.DataFrame], view: str) -> pd.DataFrame:
    filled = [f for f in frames if len(f)]
    return pd.concat(filled, ignore_index=True) if filled else _empty(view)


def _train_query_ids(instances, dataset: str) -> set[str]:
    """Routing instance ids are DATASET-QUERY-PREFERENCE: the query ids of the training split."""
    return {i.id[len(dataset) + 1: i.id.rindex("-")] for i in instances if i.split == "train"}


def candidate_feature_rows(tables: dict[str, pd.DataFrame], instances, manifest: dict) -> dict[str, pd.DataFrame]:
    """The candidate-feature rows of one dataset, from its training split (see the module doc)."""
    from iranker.data.recommendation import item_text

    dataset = manifest.get("dataset") or (instances[0].dataset if instances else "")
    if manifest.get("scenario") == "routing":
        train = _train_query_ids(instances, dataset)
        o = tables["outcomes"]
        o = o[o["query_id"].isin(train) & o["quality"].notna() & o["cost"].notna()]
        rows = [{"dataset": dataset, "model_id": m, "event_timestamp": UNDATED, "price": float(g["cost"].mean()),
                 "quality": float(g["quality"].mean()), "queries": len(g)}
                for m, g in o.groupby("model", sort=True)]
        task_of = dict(zip(tables["queries"]["query_id"], tables["queries"]["task"], strict=True)) \
            if "queries" in tables else {}
        o = o.assign(task=o["query_id"].map(task_of))
        o = o[o["task"].notna() & (o["task"] != "")]
        per_task = [{"dataset": dataset, "model_id": m, "task": str(t), "event_timestamp": UNDATED,
                     "price": float(g["cost"].mean()), "quality": float(g["quality"].mean()), "queries": len(g)}
                    for (m, t), g in o.groupby(["model", "task"], sort=True) if len(g) >= MIN_TASK_QUERIES]
        return {"model_quality": _frame(rows, "model_quality"), TASK_VIEW: _frame(per_task, TASK_VIEW)}
    inter, items = tables["interactions"], tables["items"]
    with_classes = bool(manifest.get("params", {}).get("with_classes"))
    info = {r["item_id"]: r for r in items.to_dict("records")}
    train_users = {i.user_id for i in instances if i.split == "train"}
    mine = inter[inter["user_id"].astype(str).isin(train_users)]
    dated = mine["timestamp"].notna().all() and len(mine) > 0
    rows = []
    if dated:  # a row per interaction, one second after it: the item's count and mean rating from then on
        mine = mine.sort_values(["timestamp", "user_id", "position"], kind="stable")
        count: Counter = Counter()
        total: Counter = Counter()
        rated: Counter = Counter()
        for item, rating, ts in zip(mine["item_id"], mine["rating"], mine["timestamp"], strict=True):
            count[item] += 1
            if not pd.isna(rating):
                total[item] += float(rating)
                rated[item] += 1
            rows.append((item, _stamp(ts + 1), count[item], total[item] / rated[item] if rated[item] else None))
    else:  # undated: the training users' histories (their targets are the labels), known before every instance
        last = mine.groupby("user_id")["position"].transform("max")
        hist = mine[mine["position"] < last]
        for item, g in hist.groupby("item_id", sort=True):
            mean = float(g["rating"].mean()) if g["rating"].notna().any() else None
            rows.append((item, UNDATED, len(g), mean))
    out = []
    for item, ts, n, mean in rows:
        r = info.get(item, {})
        out.append({"dataset": dataset, "item_id": str(item), "event_timestamp": ts,
                    "title": item_text(r, with_classes) if r else str(item),
                    "classes": r["classes"].split("|") if r and r.get("classes") else [],
                    "ratings": int(n), "mean_rating": None if mean is None else round(float(mean), 4)})
    return {"item_attributes": pd.DataFrame(out, columns=_COLUMNS["item_attributes"]).astype({"mean_rating": "float64"})
            if out else _empty("item_attributes")}


def instance_feature_rows(instances, dataset: str) -> dict[str, pd.DataFrame]:
    """The candidate-feature rows of a dataset given as instances only (the generic `instances` adapter: no tables),
    from its training split, stamped UNDATED (known before every instance):
    - recommendation: an item's `ratings` = how often it appears in the training users' histories (histories name
      items by their text: matched to the ids the candidates give those texts; targets are labels, not counted);
      no mean rating (instances carry none);
    - routing: a model's `quality` = its mean relevance grade over the training instances (no price: instances carry
      none, unless their candidates give features themselves); per task family too, for instances that name one."""
    train = [i for i in instances if i.split == "train"]
    scenario = instances[0].scenario if instances else None
    if scenario == "recommendation":
        id_of: dict[str, str] = {}
        for inst in instances:
            for c in inst.candidates:
                id_of.setdefault(c.text, c.id)
        seen = Counter(id_of[h] for inst in train for h in inst.history if h in id_of)
        rows = [{"dataset": dataset, "item_id": item, "event_timestamp": UNDATED, "title": "", "classes": [],
                 "ratings": int(n), "mean_rating": None} for item, n in sorted(seen.items())]
        return {"item_attributes": pd.DataFrame(rows, columns=_COLUMNS["item_attributes"]).astype(
            {"mean_rating": "float64"}) if rows else _empty("item_attributes")}
    if scenario == "routing":
        grades: dict[tuple[str, str | None], list[float]] = {}
        for inst in train:
            for c in inst.candidates:
                grade = float(inst.relevance.get(c.id, 0.0))
                grades.setdefault((c.id, None), []).append(grade)
                if inst.task:
                    grades.setdefault((c.id, inst.task), []).append(grade)
        rows = [{"dataset": dataset, "model_id": m, "event_timestamp": UNDATED, "price": None,
                 "quality": sum(g) / len(g), "queries": len(g)} for (m, t), g in sorted(grades.items(), key=str)
                if t is None]
        per_task = [{"dataset": dataset, "model_id": m, "task": t, "event_timestamp": UNDATED, "price": None,
                     "quality": sum(g) / len(g), "queries": len(g)}
                    for (m, t), g in sorted(grades.items(), key=str) if t is not None and len(g) >= MIN_TASK_QUERIES]
        return {"model_quality": _frame(rows, "model_quality"), TASK_VIEW: _frame(per_task, TASK_VIEW)}
    return {}


def instance_times(tables: dict[str, pd.DataFrame], instances) -> dict[str, datetime]:
    """When each instance's decision is made: a RecBole-protocol target's own timestamp (its features count only
    what came before), else just after the undated rows."""
    out = {i.id: AFTER_UNDATED for i in instances}
    inter = tables.get("interactions")
    if inter is None or not inter["timestamp"].notna().any():
        return out
    ts = {(str(u), int(p)): t for u, p, t in zip(inter["user_id"], inter["position"], inter["timestamp"],
                                                   strict=True)}
    for i in instances:
        t = ts.get((str(i.user_id), len(i.history)))
        if t is not None and not pd.isna(t):
            out[i.id] = _stamp(t)
    return out


def _definitions(repo: Path) -> list:
    from feast import Entity, FeatureView

    path = repo / "definitions.py"
    if not path.exists():
        raise DataError(f"{path}: no such file (the Feast definitions of the repository)")
    spec = importlib.util.spec_from_file_location("iranker_feature_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [v for v in vars(module).values() if isinstance(v, Entity | FeatureView)]


def store(repo: str | Path | None = None):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(_check_repo(repo or default_repo())))


def apply(repo: str | Path | None = None) -> list[str]:
    """Register the repository's entities and feature views (what `feast apply` does); returns their names."""
    repo = _check_repo(repo or default_repo())
    for name in FEATURE_VIEWS:
        if not (repo / "data" / f"{name}.parquet").exists():
            raise DataError(f"{repo / 'data' / name}.parquet: missing; run `iranker features apply --data DIR` "
                            "with a recommendation dataset folder first")
    objects = _definitions(repo)
    store(repo).apply(objects)
    return sorted(o.name for o in objects)


def materialize(repo: str | Path | None = None) -> dict[str, int]:
    """Load every feature row into the online store; returns rows per view."""
    repo = _check_repo(repo or default_repo())
    frames = {n: pd.read_parquet(repo / "data" / f"{n}.parquet") for n in FEATURE_VIEWS}
    filled = {n: df for n, df in frames.items() if len(df)}
    start = min(df["event_timestamp"].min() for df in filled.values()).to_pydatetime() - timedelta(seconds=1)
    end = max(df["event_timestamp"].max() for df in filled.values()).to_pydatetime() + timedelta(seconds=1)
    store(repo).materialize(start_date=start, end_date=end, feature_views=list(filled))
    return {n: len(df) for n, df in frames.items()}


def _features_of(scenario: str, row: dict):
    """A CandidateFeatures from a Feast row of the scenario's view (None when the store knows nothing)."""
    from iranker.schema import CandidateFeatures

    _, _, fields = CANDIDATE_VIEWS[scenario]
    vals = {f: row.get(f) for f in fields}
    vals = {k: v for k, v in vals.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}
    if scenario == "recommendation":
        vals["ratings"] = int(vals.get("ratings") or 0)  # no row before the instance: nobody had rated it yet
        classes = vals.get("classes")
        vals["classes"] = [str(c) for c in classes] if classes is not None and len(classes) else None
        vals = {k: v for k, v in vals.items() if v is not None}
    elif not vals:
        return None
    return CandidateFeatures(**vals)


def attach_offline(instances, times: dict[str, datetime], repo: str | Path) -> list:
    """The instances with their recommendation and routing candidates' features from the offline store, as of each
    instance's time (`instance_times`); other candidates (passages, features already given) stay as they are."""
    fs = store(repo)
    out = list(instances)
    on_task = [(k, j) for k, inst in enumerate(out) if inst.scenario == "routing" and inst.task
               for j, c in enumerate(inst.candidates) if c.features is None]
    for scenario, (view, key, fields) in CANDIDATE_VIEWS.items():
        where = [(k, j) for k, inst in enumerate(out) if inst.scenario == scenario
                 for j, c in enumerate(inst.candidates) if c.features is None]
        if not where:
            continue
        asked = [(out[k].dataset, out[k].candidates[j].id, times[out[k].id]) for k, j in where]
        unique = sorted(set(asked))
        entity = pd.DataFrame({"dataset": [a[0] for a in unique], key: [a[1] for a in unique],
                               "event_timestamp": [a[2] for a in unique]})
        got = fs.get_historical_features(entity_df=entity, features=[f"{view}:{f}" for f in fields]).to_df()
        # one answer per (dataset, id, time); the file offline store leaves out a row no feature row precedes
        found = {(r["dataset"], r[key], pd.Timestamp(r["event_timestamp"]).to_pydatetime()): r
                 for r in got.to_dict("records")}
        cands: dict[int, list] = {}
        for (k, j), a in zip(where, asked, strict=True):
            feats = _features_of(scenario, found.get((a[0], a[1], pd.Timestamp(a[2]).to_pydatetime()), {}))
            cands.setdefault(k, list(out[k].candidates))[j] = out[k].candidates[j].model_copy(
                update={"features": feats})
        for k, cs in cands.items():
            out[k] = out[k].model_copy(update={"candidates": cs})
    if on_task:
        asked = [(out[k].dataset, out[k].candidates[j].id, out[k].task, times[out[k].id]) for k, j in on_task]
        unique = sorted(set(asked))
        entity = pd.DataFrame({"dataset": [a[0] for a in unique], "model_id": [a[1] for a in unique],
                               "task": [a[2] for a in unique], "event_timestamp": [a[3] for a in unique]})
        got = fs.get_historical_features(entity_df=entity, features=[f"{TASK_VIEW}:{f}" for f in TASK_FIELDS]).to_df()
        found = {(r["dataset"], r["model_id"], r["task"], pd.Timestamp(r["event_timestamp"]).to_pydatetime()): r
                 for r in got.to_dict("records")}
        cands = {}
        for (k, j), a in zip(on_task, asked, strict=True):
            c = out[k].candidates[j]
            row = found.get((a[0], a[1], a[2], pd.Timestamp(a[3]).to_pydatetime()))
            cands.setdefault(k, list(out[k].candidates))[j] = c.model_copy(
                update={"features": _on_task(c.features, row)})
        for k, cs in cands.items():
            out[k] = out[k].model_copy(update={"candidates": cs})
    return out


TASK_FIELDS = ("price", "quality")


def _on_task(features, row: dict | None):
    """A routed model's features with its price and quality on the request's task family where the store has them
    (a missing per-family price keeps the overall one)."""
    from iranker.schema import CandidateFeatures

    def value(f):
        v = (row or {}).get(f)
        return None if v is None or (isinstance(v, float) and pd.isna(v)) else float(v)

    if value("quality") is None:
        return features
    price = value("price")
    base = features.model_dump(exclude_none=True) if features is not None else {}
    return CandidateFeatures(**{**base, "quality": value("quality"), **({"price": price} if price is not None else {})})


def load_with_features(sources: Sequence[str], hide_task: float = 0.0, seed: int = 0) -> list:
    """The instances of `sources` (dataset folders, instances JSONL files, 'samples') with their candidates'
    features from Feast's offline store - the one way training and evaluation load what they rank. A seeded share
    `hide_task` of the routing instances that name a task family lose it (training: requests need not name one)."""
    import tempfile

    from iranker.data import load_sources

    builds = load_sources(list(sources))
    with tempfile.TemporaryDirectory(prefix="iranker-features-") as tmp:
        return with_candidate_features(builds, tmp, hide_task, seed)


def candidate_sources(builds: Sequence) -> dict[str, pd.DataFrame]:
    """The candidate views' source rows from datasets ((tables, instances, manifest) each): their training splits'
    counts, means and prices (`candidate_feature_rows`); from a source of instances only, what its training
    instances tell (`instance_feature_rows`)."""
    needs = {"recommendation": {"interactions", "items"}, "routing": {"outcomes"}}
    frames: dict[str, list[pd.DataFrame]] = {"item_attributes": [], "model_quality": [], TASK_VIEW: []}
    for tables, instances, manifest in builds:
        scenario = manifest.get("scenario")  # a list for a dataset of several (feedback)
        served = manifest.get("source") == "feedback"  # its tables are calls and outcomes, not the public ones
        if not served and isinstance(scenario, str) and needs.get(scenario, {"-"}) <= set(tables):
            rows = candidate_feature_rows(tables, instances, manifest)
        elif (served or not tables) and instances:
            datasets = sorted({i.dataset for i in instances})
            rows = {}
            for dataset in datasets:
                for view, df in instance_feature_rows([i for i in instances if i.dataset == dataset], dataset).items():
                    rows[view] = _concat([rows[view], df], view) if view in rows else df
        else:
            rows = {}
        for view, df in rows.items():
            frames[view].append(df)
    return {view: _concat(f, view) for view, f in frames.items()}


def with_candidate_features(builds: Sequence, workdir: str | Path, hide_task: float = 0.0, seed: int = 0) -> list:
    """Every instance of `builds` ((tables, instances, manifest) per dataset) with its candidates' features, read
    from the offline store of a Feast repository made in `workdir` (this project's definitions, the candidate
    views written from these datasets' training splits): what training and evaluation rank."""
    repo = Path(workdir) / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "definitions.py"):
        shutil.copy(default_repo() / name, repo / name)
    times: dict[str, datetime] = {}
    for tables, instances, _ in builds:
        times.update(instance_times(tables, instances))
    sources = candidate_sources(builds)
    sources["user_context"] = pd.DataFrame({"user_id": pd.Series(dtype="object"),
                                            "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]")})
    _write_sources(repo, sources)
    objects = [o for o in _definitions(repo) if o.name != "user_context"]
    with contextlib.redirect_stdout(sys.stderr):
        store(repo).apply(objects)
    instances = [i for _, insts, _ in builds for i in insts]
    if hide_task > 0:
        from iranker.io import seeded_rng

        instances = [i.model_copy(update={"task": None})
                     if i.task and seeded_rng(seed, "hide-task", i.id).random() < hide_task else i for i in instances]
    return attach_offline(instances, times, repo)


class CandidateFeatureStore:
    """Online lookups of candidate features for the server (one FeatureStore, reused across requests)."""

    def __init__(self, repo: str | Path | None = None, datasets: dict[str, str] | None = None):
        self.store = store(repo)
        self.datasets = datasets or {}

    def lookup(self, scenario: str, ids: list[str], dataset: str | None = None, task: str | None = None) -> list:
        """Per candidate id: its CandidateFeatures from the online store, or None where none is known; a routing
        request's `task` family picks the models' figures on that family where the store has them."""
        dataset = dataset or self.datasets.get(scenario)
        if scenario not in CANDIDATE_VIEWS or not dataset or not ids:
            return [None] * len(ids)
        view, key, fields = CANDIDATE_VIEWS[scenario]
        resp = self.store.get_online_features(features=[f"{view}:{f}" for f in fields],
                                              entity_rows=[{"dataset": dataset, key: i} for i in ids]).to_dict()
        out = []
        for k in range(len(ids)):
            row = {f: resp[f][k] for f in fields}
            out.append(None if all(v is None for v in row.values()) else _features_of(scenario, row))
        if scenario == "routing" and task:
            try:
                resp = self.store.get_online_features(
                    features=[f"{TASK_VIEW}:{f}" for f in TASK_FIELDS],
                    entity_rows=[{"dataset": dataset, "model_id": i, "task": task} for i in ids]).to_dict()
            except Exception as e:  # noqa: BLE001 - e.g. a store applied before the view existed: overall figures
                _warn_once(f"per-family routing figures unavailable ({type(e).__name__}: {e}); the overall ones are "
                           "shown; run `iranker features apply` and `materialize` again to add them")
                return out
            out = [_on_task(f, {k: resp[k][n] for k in TASK_FIELDS}) for n, f in enumerate(out)]
        return out


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        log.warning(msg)


class UserFeatures:
    """Online lookups of user context (one FeatureStore, reused across requests)."""

    def __init__(self, repo: str | Path | None = None):
        self.store = store(repo)

    def context(self, user_ids: list[str]) -> list[dict | None]:
        """Per user: {feature: value}, or None for a user the store does not know."""
        if not user_ids:
            return []
        refs = [f"user_context:{f}" for f in USER_FEATURES]
        resp = self.store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in user_ids])
        cols = resp.to_dict()
        out: list[dict | None] = []
        for k in range(len(user_ids)):
            row = {f: cols[f][k] for f in USER_FEATURES}
            out.append(None if row["n_interactions"] is None else row)
        return out

    def history(self, user_id: str) -> list[str] | None:
        ctx = self.context([user_id])[0]
        return None if ctx is None else list(ctx["history_titles"] or [])

    def add_chosen(self, user_id: str, item_id: str, title: str, history: int = HISTORY_ITEMS) -> bool:
        """Append an item the user chose to their online context through the push source (no re-materialization):
        their next request's history ends with it. False for a user the store does not know."""
        from feast.data_source import PushMode

        ctx = self.context([user_id])[0]
        if ctx is None:
            return False
        row = {**ctx, "user_id": user_id, "event_timestamp": datetime.now(timezone.utc),
               "history_titles": [*(ctx["history_titles"] or []), title][-history:],
               "history_item_ids": [*(ctx["history_item_ids"] or []), item_id][-history:],
               "n_interactions": int(ctx["n_interactions"]) + 1,
               "mean_rating": float("nan") if ctx["mean_rating"] is None else float(ctx["mean_rating"]),
               "favourite_classes": list(ctx["favourite_classes"] or [])}
        self.store.push(USER_PUSH_SOURCE, pd.DataFrame([row]), to=PushMode.ONLINE)
        return True
