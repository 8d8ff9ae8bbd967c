"""`iranker evaluate`: the model, the base model and every simple baseline on the very same instances.

Per (dataset, scenario) group it reports each system's mean metrics with bootstrap 95% intervals, the expected
value of a random ranking, the parse-failure rate of every model system, and a paired comparison (bootstrap
interval of the difference + randomization test) of the evaluated model against the base model.
Outputs in `out/`: `metrics.json`, `per_instance.jsonl` (every system's metrics per instance, for paired
comparisons later, e.g. the promotion gate), `report.md` and PNG plots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iranker.evaluate import _min_grade
from iranker.evaluate.baselines import BASELINES
from iranker.metrics import bootstrap_interval, instance_metrics, paired_comparison, random_instance_metrics
from iranker.schema import RankingInstance

log = logging.getLogger(__name__)

KS = (1, 3, 5, 10)
PRIMARY = {"recommendation": "mrr", "passage": "ndcg@10", "routing": "ndcg@3"}
REPORTED = ("mrr", "ndcg@10", "ndcg@3", "hit@1")
RANDOM = "random (expected)"


@dataclass
class ModelSystem:
    name: str  # as reported, e.g. "trained", "base (iterative)"
    model: str  # folder or alias
    method: str = "iterative"  # iterative | direct
    thoughts: str | None = None  # a thought store whose nearest thoughts each request is shown (iranker.thoughts)
    templates_k: int | None = None  # None: the model's saved setting, else 3 with a store


@dataclass
class EvalData:
    instances: list[RankingInstance]
    reference: list[RankingInstance] = field(default_factory=list)  # training split etc., for the baselines
    qrels: dict[str, dict[str, float]] = field(default_factory=dict)  # instance id -> every judged grade
    sources: list[str] = field(default_factory=list)


def _say(msg: str) -> None:
    log.info(msg)


def _pick(instances: list[RankingInstance], limit: int, seed: int, total: int = 0) -> list[RankingInstance]:
    """At most `limit` instances per (dataset, scenario), chosen by a seeded hash of their ids (stable).

    `total` (instead of `limit`): the smallest per-group limit that gives at least `total` instances in all, so a
    group with fewer instances than its even share leaves the rest to the others (all of them when there are
    fewer than `total`)."""
    groups: dict[tuple[str, str], list[RankingInstance]] = {}
    for i in instances:
        groups.setdefault((i.dataset, i.scenario), []).append(i)
    if total:
        sizes = [len(rows) for rows in groups.values()]
        limit = next((n for n in range(1, max(sizes) + 1) if sum(min(s, n) for s in sizes) >= total), max(sizes))
    if not limit:
        return instances
    keep = set()
    for rows in groups.values():
        ranked = sorted(rows, key=lambda i: hashlib.sha256(f"{seed}:{i.id}".encode()).hexdigest())
        keep |= {i.id for i in ranked[:limit]}
    return [i for i in instances if i.id in keep]


EVAL_ORDERS = ("first-stage", "shuffled")


def load_eval_data(sources: Sequence[str], split: str | None = "test", limit: int = 0, seed: int = 0,
                   orders: Sequence[str] = EVAL_ORDERS, total: int = 0) -> EvalData:
    """Instances from dataset folders (written by `iranker data ingest`), instances JSONL files or 'samples', with
    their candidates' features (Feast's offline store).

    The evaluated split is `split` (None or "all": every instance); every other instance stays available to the
    baselines that learn from data (popularity, routers). A dataset folder's full qrels table, when it has one,
    is used for passage nDCG, so figures follow trec_eval's convention (ideal over every judged passage).
    `limit` caps the instances per dataset; `total` instead asks for at least that many in all, spread as evenly as
    the datasets allow (`_pick`). Each evaluated instance is listed in every order of `orders` (`iranker.listing`):
    the first listed keeps its id and dataset name, the others are reported as datasets of their own
    (`DATASET@shuffled`, ids `ID@shuffled`).
    """
    from iranker.data import SAMPLES_DIR, read_manifest
    from iranker.features import load_with_features
    from iranker.listing import listed

    everything: list[RankingInstance] = load_with_features(sources)
    qrels: dict[str, dict[str, float]] = {}
    names = []
    for src in sources:
        p = Path(src)
        if src != "samples" and p.is_dir():
            dataset = read_manifest(p).get("dataset")
            qrels.update(_folder_qrels(p, [i for i in everything if i.dataset == dataset]))
        names.append(f"samples ({SAMPLES_DIR})" if src == "samples" else str(p))
    ids = [i.id for i in everything]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"instance id {dup!r} appears more than once across {', '.join(sources)}")
    chosen = everything if split in (None, "all") else [i for i in everything if i.split == split]
    if not chosen:
        raise ValueError(f"no instances of split {split!r} in {', '.join(sources)} (use --split all to take every "
                         "instance)")
    chosen = _pick(chosen, limit, seed, total)
    ids_chosen = {i.id for i in chosen}
    reference = [i for i in everything if i.id not in ids_chosen]
    qrels = {k: v for k, v in qrels.items() if k in ids_chosen}
    listed_all: list[RankingInstance] = []
    for n, order in enumerate(orders):
        for inst in chosen:
            one = listed(inst, order, seed)
            if n:
                one = one.model_copy(update={"id": f"{inst.id}@{order}", "dataset": f"{inst.dataset}@{order}"})
                if inst.id in qrels:
                    qrels[one.id] = qrels[inst.id]
            listed_all.append(one)
    return EvalData(instances=listed_all, reference=reference, qrels=qrels, sources=names)


def _folder_qrels(folder: Path, rows: list[RankingInstance]) -> dict[str, dict[str, float]]:
    table = folder / "tables" / "qrels.parquet"
    if not table.exists() or not rows or rows[0].scenario != "passage":
        return {}
    import pandas as pd

    q = pd.read_parquet(table)
    by_qid: dict[str, dict[str, float]] = {}
    for qid, doc, grade in zip(q["qid"].astype(str), q["docid"].astype(str), q["grade"], strict=True):
        by_qid.setdefault(qid, {})[doc] = float(grade)
    out = {}
    for inst in rows:
        qid = inst.id.rsplit("-q", 1)[-1]
        if qid in by_qid:
            out[inst.id] = by_qid[qid]
    return out


def rank_with(system: ModelSystem, instances: Sequence[RankingInstance], max_words: int | None, batch_size: int,
              progress: bool = True, device: str = "auto", dtype: str = "auto"):
    """Responses of a model system (None for instances its method cannot rank, e.g. direct on > 26 candidates),
    ranked under the settings saved with its model (`max_words`, when given, overrides them with a warning)."""
    from dataclasses import replace

    from iranker.prompts import MAX_POOL
    from iranker.ranker import open_model, rank_requests

    todo = [k for k, i in enumerate(instances) if system.method == "iterative" or len(i.candidates) <= MAX_POOL]
    out = [None] * len(instances)
    if not todo:
        return out, "", None
    backend, config = open_model(system.model, "transformers", {"max_words": max_words}, thoughts=system.thoughts,
                                 templates_k=system.templates_k, device=device, dtype=dtype)
    reqs = [instances[k].to_request(method=system.method) for k in todo]
    _say(f"{system.name}: ranking {len(reqs)} instances ({system.method}) with {backend.name} ({config.layout} "
         f"layout, {config.max_words} words per candidate)")
    responses = rank_requests(backend, reqs, replace(config, batch_size=batch_size), progress=progress)
    for k, r in zip(todo, responses, strict=True):
        out[k] = r
    settings = {"layout": config.layout, "max_words": config.max_words, "window": config.window,
                "stride": config.stride}
    if config.thoughts is not None:
        settings.update(thought_templates=config.thoughts.path, templates_k=config.templates_k)
    return out, backend.name, settings


def _summary(rows: list[dict[str, float]], seed: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    means = {m: sum(r[m] for r in rows) / len(rows) for m in rows[0]}
    intervals = {m: list(bootstrap_interval([r[m] for r in rows], seed=seed)) for m in REPORTED}
    return means, intervals


def trained_scenarios(model: str | Path | None) -> list[str]:
    """The scenarios a model was trained on when its training held some out (`train_scenarios` in the
    iranker-train.json a training run writes into its final folder); [] otherwise."""
    if not model:
        return []
    record = Path(model) / "iranker-train.json"
    if not record.exists():
        return []
    return list(json.loads(record.read_text()).get("config", {}).get("train_scenarios") or [])


def evaluate(data: EvalData, out: str | Path, model: str | None = None, base: str | None = None,
             direct: bool = True, baselines: Sequence[str] = tuple(BASELINES), max_words: int | None = None,
             batch_size: int = 16, train_run: str | Path | None = None, seed: int = 0,
             progress: bool = True, device: str = "auto", dtype: str = "auto", thoughts: str | Path | None = None,
             templates_k: int | None = None) -> dict:
    """Evaluate and write metrics.json, per_instance.jsonl, report.md and plots into `out`; returns metrics.

    `thoughts`: a thought store (`iranker.thoughts`) whose `templates_k` nearest thoughts the evaluated system is
    shown with each request, as `iranker rank|serve --thought-templates` shows them: the trained model with them
    when `model` is given, else the base with them ("base (templates)") against the same base without. A model
    saved with `templates_k` > 0 (its ranking settings) is shown its own store without being asked, as served."""
    from iranker.models import EMBEDDED_ALIAS
    from iranker.thoughts import ThoughtStore

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if train_run is not None and not (Path(train_run) / "metrics.jsonl").exists():
        raise FileNotFoundError(f"--train-run {train_run}: no metrics.jsonl (is it an `iranker train --out` folder?)")
    if thoughts and templates_k is not None and templates_k < 1:
        raise ValueError(f"templates_k: expected at least 1 thought per request with a store, got {templates_k}")
    store = ThoughtStore.load(thoughts) if thoughts else None  # a bad store fails before any model loads
    out = Path(out)  # made once there is something to write: a model that fails to load leaves nothing behind
    base = base or EMBEDDED_ALIAS
    instances = data.instances
    trained_on = trained_scenarios(model)
    t0 = time.perf_counter()

    systems: list[ModelSystem] = []
    shown = {"thoughts": str(thoughts), "templates_k": templates_k} if store is not None else {}
    if model:
        systems.append(ModelSystem("trained", model, **shown))
    elif store is not None:
        systems.append(ModelSystem("base (templates)", base, **shown))
    systems.append(ModelSystem("base (iterative)", base))
    if direct:
        systems.append(ModelSystem("base (direct)", base, "direct"))
    responses, model_names, settings = {}, {}, {}
    for s in systems:
        responses[s.name], model_names[s.name], settings[s.name] = rank_with(s, instances, max_words, batch_size,
                                                                             progress, device, dtype)
    main = systems[0].name

    rankings: dict[str, list] = {s.name: [r.ranking if r else None for r in responses[s.name]] for s in systems}
    for b in baselines:
        _say(f"baseline {b}")
        rankings[b] = BASELINES[b](instances, data.reference)

    groups: dict[tuple[str, str], list[int]] = {}
    for k, inst in enumerate(instances):
        groups.setdefault((inst.dataset, inst.scenario), []).append(k)
    results, per_instance = [], []
    for (dataset, scenario), idx in groups.items():
        rel = [data.qrels.get(instances[k].id, instances[k].relevance) for k in idx]
        grades = [_min_grade(instances[k]) for k in idx]
        rows: dict[str, list[dict[str, float]]] = {}
        for name, ranks in rankings.items():
            if all(ranks[k] is not None for k in idx):
                rows[name] = [instance_metrics(ranks[k], r, KS, g) for k, r, g in zip(idx, rel, grades, strict=True)]
        rows[RANDOM] = [random_instance_metrics([c.id for c in instances[k].candidates], r, KS, g)
                        for k, r, g in zip(idx, rel, grades, strict=True)]
        summary = {name: _summary(r, seed) for name, r in rows.items()}
        parse = {}
        for s in systems:
            if s.name in rows:
                resp = [responses[s.name][k] for k in idx]
                decisions = sum(max(r.usage.llm_calls, 1) for r in resp)
                parse[s.name] = {"parse_failures": sum(r.parse_failures for r in resp), "decisions": decisions,
                                 "rate": sum(r.parse_failures for r in resp) / decisions}
        comparison = {}
        if main != "base (iterative)" and main in rows and "base (iterative)" in rows:
            comparison = {m: paired_comparison([r[m] for r in rows[main]], [r[m] for r in rows["base (iterative)"]],
                                               seed=seed) for m in REPORTED}
        versus_first = {}  # the trained model against the first stage it reranks, paired (the shipping bar)
        if main != "base (iterative)" and main in rows and "first-stage" in rows:
            versus_first = {m: paired_comparison([r[m] for r in rows[main]], [r[m] for r in rows["first-stage"]],
                                                 seed=seed) for m in REPORTED}
        pool_sizes = sorted({len(instances[k].candidates) for k in idx})
        results.append({
            "dataset": dataset, "scenario": scenario, "n_instances": len(idx),
            "domain": ("held-out" if trained_on and scenario not in trained_on else "in-domain") if trained_on else None,
            "candidates": pool_sizes[0] if len(pool_sizes) == 1 else pool_sizes,
            "model": model_names.get(main, main), "system": main,
            "method": next(s.method for s in systems if s.name == main),
            "primary_metric": PRIMARY[scenario],
            "metrics": summary[main][0] if main in summary else {},
            "intervals": summary[main][1] if main in summary else {},
            "parse_failure_rate": parse.get(main, {}).get("rate", 0.0),
            "baselines": {n: s[0] for n, s in summary.items() if n != main},
            "baseline_intervals": {n: s[1] for n, s in summary.items() if n != main},
            "parse_failures": parse,
            "comparison": {"system": main, "against": "base (iterative)", **comparison} if comparison else {},
            "comparison_first_stage": ({"system": main, "against": "first-stage", **versus_first}
                                       if versus_first else {}),
            "qrels": "full (trec_eval)" if any(instances[k].id in data.qrels for k in idx) else "instance",
        })
        for name, r in rows.items():
            if name == RANDOM:
                continue
            for k, m in zip(idx, r, strict=True):
                per_instance.append({"id": instances[k].id, "dataset": dataset, "scenario": scenario,
                                     "system": name, **{key: m[key] for key in REPORTED}})
    metrics = {"model": model_names.get(main, main), "system": main, "base": model_names.get("base (iterative)"),
               "train_scenarios": trained_on,
               "thought_templates": ({"store": str(thoughts), "templates_k": settings[main]["templates_k"],
                                      "thoughts": len(store), "shown_to": main} if store is not None else None),
               "method": "iterative", "sources": data.sources, "n_instances": len(instances),
               "max_words": (settings[main] or {}).get("max_words", max_words), "ranking_settings": settings,
               "seconds": round(time.perf_counter() - t0, 1), "results": results}
    from iranker.evaluate.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    (out / "per_instance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_instance))
    write_report(metrics, out, train_run)
    tmp.replace(out / "metrics.json")
    return metrics
