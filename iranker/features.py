"""Feast access shared by the pipeline and the server: user context (history, counts, tastes) and item attributes.

    build_feature_tables("data/ml-100k", repo)     # parquet sources from a recommendation dataset folder
    apply(repo); materialize(repo)                 # register the definitions, load the online store (SQLite)
    UserFeatures(repo).history("196")              # -> ["Kolya (1996)", ...] or None for an unknown user

The repository is `feature_repo/` (definitions.py + feature_store.yaml); `$IRANKER_FEATURE_REPO` or `repo=` picks
another, e.g. a copy whose feature_store.yaml points at Redis on a cluster.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from iranker.data.base import DataError

FEATURE_VIEWS = ("user_context", "item_attributes")
USER_FEATURES = ("history_titles", "history_item_ids", "n_interactions", "mean_rating", "favourite_classes")
# Rows of data without timestamps (e.g. LLMRank files) are stamped with this fixed time, so that builds repeat.
UNDATED = datetime(2000, 1, 1, tzinfo=timezone.utc)


def default_repo() -> Path:
    env = os.environ.get("IRANKER_FEATURE_REPO")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "feature_repo"


def _check_repo(repo: Path) -> Path:
    repo = Path(repo)
    if not (repo / "feature_store.yaml").exists():
        raise DataError(f"{repo}: not a Feast repository (no feature_store.yaml); pass --repo or set "
                        "IRANKER_FEATURE_REPO")
    return repo


def build_feature_tables(data_dir: str | Path, repo: str | Path | None = None, history: int = 20,
                         n_classes: int = 3) -> dict[str, pd.DataFrame]:
    """Write the parquet sources of the feature views from a recommendation dataset folder."""
    from iranker.data import load_tables, read_manifest
    from iranker.data.recommendation import item_text

    repo = _check_repo(repo or default_repo())
    manifest = read_manifest(data_dir)
    if manifest.get("scenario") != "recommendation":
        raise DataError(f"{data_dir}: user features come from recommendation data; this folder holds "
                        f"{manifest.get('scenario')} data (source {manifest.get('source')})")
    tables = load_tables(data_dir)
    inter, items = tables["interactions"], tables["items"]
    with_classes = bool(manifest.get("params", {}).get("with_classes"))
    info = {r["item_id"]: r for r in items.to_dict("records")}
    texts = {i: item_text(r, with_classes) for i, r in info.items()}
    popularity = Counter(inter["item_id"])

    def stamp(ts: float | None) -> datetime:
        return UNDATED if ts is None or pd.isna(ts) else datetime.fromtimestamp(float(ts), tz=timezone.utc)

    users = []
    ordered = inter.sort_values(["user_id", "position"], kind="stable")
    for u, g in ordered.groupby("user_id", sort=True):
        seq = g["item_id"].tolist()
        recent = seq[-history:]
        classes = Counter(c for i in seq for c in (info[i]["classes"].split("|") if info[i]["classes"] else []))
        users.append({
            "user_id": str(u), "event_timestamp": stamp(g["timestamp"].max()),
            "history_titles": [texts[i] for i in recent], "history_item_ids": recent,
            "n_interactions": len(seq), "mean_rating": float(g["rating"].mean()) if g["rating"].notna().any()
            else float("nan"),
            "favourite_classes": [c for c, _ in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))[:n_classes]],
        })
    item_rows = [{"item_id": i, "event_timestamp": UNDATED, "title": texts[i],
                  "classes": r["classes"].split("|") if r["classes"] else [], "popularity": popularity.get(i, 0)}
                 for i, r in info.items()]
    out = {"user_context": pd.DataFrame(users), "item_attributes": pd.DataFrame(item_rows)}
    (repo / "data").mkdir(exist_ok=True)
    for name, df in out.items():
        tmp = repo / "data" / f".{name}.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, repo / "data" / f"{name}.parquet")
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
    start = min(df["event_timestamp"].min() for df in frames.values()).to_pydatetime() - timedelta(seconds=1)
    end = max(df["event_timestamp"].max() for df in frames.values()).to_pydatetime() + timedelta(seconds=1)
    store(repo).materialize(start_date=start, end_date=end, feature_views=list(FEATURE_VIEWS))
    return {n: len(df) for n, df in frames.items()}


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
