"""Thought templates measured (the IRanker paper's IRanker-COT claim in our setting): a model ranks the same test
instances plain and with thought templates, and the difference gets a paired 95% interval.

The store (`iranker thoughts collect`, or thoughts/ of a reasoning-mode training run) holds rewarded thoughts written
on OTHER queries than the test ones (training splits, or another query set); each test request is shown the thoughts
of its `--k` most similar stored queries of its scenario (`iranker.thoughts`, BM25). Both runs rank in fast mode under
the model's own ranking settings, so the templates are the only difference. The random expectation and the first
stage's order are scored on the same instances. `--retrieval bm25,minilm` adds a third run on the same instances,
the templates found by MiniLM embeddings instead of BM25 (`templates_minilm`), paired against both.

    python benchmarks/bench_templates.py --store STORE --data data/dl19 data/ml-100k data/routerbench [--limit 30]
    python benchmarks/bench_templates.py --smoke --out /tmp/templates.json   # the tiny store and the samples

Writes benchmarks/results/bench_templates.json (--out): per dataset the plain and templated metrics, random, first
stage, the paired difference, how many requests were shown at least one template; the store; the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iranker.devices import cpu_info
from iranker.evaluate import _min_grade
from iranker.evaluate.baselines import first_stage
from iranker.evaluate.harness import load_eval_data
from iranker.metrics import instance_metrics, paired_comparison, random_instance_metrics
from iranker.ranker import open_model, rank_requests
from iranker.thoughts import ThoughtStore, ThoughtWriter, retrieval_text

METRICS = ("ndcg@10", "mrr")


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows) if rows else 0.0


def smoke_store(folder: Path) -> Path:
    """A tiny store for --smoke: thoughts on queries that resemble the samples' (written here, not by a model)."""
    with ThoughtWriter(folder, source="bench_templates --smoke") as w:
        w.add("passage", "how do vaccines work", "a passage about another topic is the least relevant", 1.0, 3)
        w.add("recommendation", "Star Wars (1977) Toy Story (1995)", "an item far from the history goes first", 1.0, 4)
        w.add("routing", "solve the equation", "a small model is the worst choice for hard math", 1.0, 5)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="thought store folder")
    ap.add_argument("--data", nargs="+", default=["samples"], help="test dataset folders")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="at most this many instances per dataset (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model ranked (default: the embedded SmolLM2-135M)")
    ap.add_argument("--k", type=int, default=3, help="templates per request (default 3)")
    ap.add_argument("--retrieval", default="bm25", help="comma-separated: bm25 (the store's, run 'templates'), "
                    "minilm (run 'templates_minilm'); default bm25")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="the samples with a tiny hand-written store (a check)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_templates.json"))
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    out = Path(args.out)
    if args.smoke:
        args.store = str(smoke_store(out.parent / (out.stem + "-store")))
        args.split, args.limit = "all", args.limit or 3
    if not args.store:
        ap.error("--store: a thought store folder is required (or --smoke)")
    retrievals = [r for r in args.retrieval.split(",") if r]
    stores = {("templates" if r == "bm25" else f"templates_{r}"): ThoughtStore.load(args.store, retrieval=r)
              for r in retrievals}
    store = next(iter(stores.values()))
    data = load_eval_data(args.data, split=args.split, limit=args.limit, seed=args.seed, orders=("first-stage",))
    instances = data.instances
    reqs = [i.to_request() for i in instances]
    backend, config = open_model(args.model, templates_k=0)  # plain: none of a store the model may be saved with
    config = replace(config, batch_size=args.batch_size)
    runs, seconds = {}, {}
    arms = [("plain", config), *((name, replace(config, thoughts=st, templates_k=args.k)) for name, st in stores.items())]
    for name, cfg in arms:
        say(f"{name}: ranking {len(reqs)} instances with {backend.name}")
        started = time.perf_counter()
        runs[name] = rank_requests(backend, reqs, cfg, progress=True)
        seconds[name] = round(time.perf_counter() - started, 1)
    firsts = first_stage(instances)
    by_dataset: dict[str, list[int]] = {}
    for n, inst in enumerate(instances):
        by_dataset.setdefault(inst.dataset, []).append(n)
    table = []
    for dataset, idx in by_dataset.items():
        rows: dict[str, list[dict]] = {**{name: [] for name in runs}, "random": [], "first_stage": []}
        for n in idx:
            inst, g = instances[n], _min_grade(instances[n])
            for name in runs:
                rows[name].append(instance_metrics(runs[name][n].ranking, inst.relevance, (1, 3, 10), g))
            rows["random"].append(random_instance_metrics([c.id for c in inst.candidates], inst.relevance,
                                                          (1, 3, 10), g))
            rows["first_stage"].append(instance_metrics(firsts[n], inst.relevance, (1, 3, 10), g))
        shown = {name: sum(bool(st.nearest(instances[n].scenario, retrieval_text(
            instances[n].scenario, instances[n].query, instances[n].history), args.k)) for n in idx)
            for name, st in stores.items()}
        entry = {"dataset": dataset, "scenario": instances[idx[0]].scenario, "n": len(idx),
                 "with_templates_shown": shown.get("templates", next(iter(shown.values()))),
                 **({"templates_shown": shown} if len(shown) > 1 else {}),
                 "parse_failures": {k: sum(runs[k][n].parse_failures for n in idx) for k in runs}}
        for m in METRICS:
            entry[m] = {k: round(_mean(v, m), 4) for k, v in rows.items()}
            pairs = [(name, "plain") for name in stores]
            if "templates" in stores:
                pairs += [(name, "templates") for name in stores if name != "templates"]
            for a, b in pairs:
                cmp = paired_comparison([r[m] for r in rows[a]], [r[m] for r in rows[b]])
                entry[m][f"{a}_minus_{b}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in cmp.items()}
        table.append(entry)
        say(json.dumps(entry))
    result = {
        "benchmark": "bench_templates",
        "command": "python benchmarks/bench_templates.py " + " ".join(sys.argv[1:]),
        "model": backend.name, "k": args.k, "split": args.split, "limit": args.limit, "retrieval": retrievals,
        "store": {"path": args.store, "thoughts": {s: len(v) for s, v in store.by_scenario.items()},
                  "sources": sorted({t.source for v in store.by_scenario.values() for t in v})},
        "seconds": seconds, "machine": {"cpu": cpu_info()}, "table": table,
        "note": "Metrics over each instance's candidates (relevance as ingested); first_stage = the retriever's "
                "order (passages), popularity before the instance (recommendation), best average (routing).",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
