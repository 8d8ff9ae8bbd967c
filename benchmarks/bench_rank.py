"""Speed of iterative ranking (fast mode, embedded SmolLM2-135M) against its floor and the naive loop, one run.

For 20 candidates (a TREC DL 2019 query with its BM25 top-20 passages, and a MovieLens-100K user) it measures:
- floor: ONE forward pass over the full prompt (what a single listwise scoring would cost);
- ours: the iterative ranker, cached layout (candidates encoded once, eliminated ones masked out of the cache);
- naive: the published loop, re-listing and re-encoding the whole pool at every step (the relist layout).
Then batching: 16 instances ranked in one batch vs one by one. Then quality: nDCG@10 of both layouts on the DL19
BM25 top-20 of every query, beside BM25's own order and the random expectation on the same instances.

Goals: ours <= 2x floor; naive >= 5x ours; batch of 16 >= 2x the throughput of one by one.

`--sweep-candidates 2,5,10,20,40,100` adds latency against the number of candidates (`latency_by_candidates`, drawn
by `benchmarks/render_results.py`'s rank_latency plot): the first N of one DL19 query's BM25 list (sliding windows
past the 20-candidate window) and of one MovieLens-100K user's candidates (20 at most), ranked by the cached
iterative ranker, beside the floor (one pass over the listed prompt) where N fits one window. `--sweep-only` runs the
sweep alone and merges it into --out, keeping the file's other sections.

    python benchmarks/bench_rank.py [--out benchmarks/results/bench_rank.json] [--quality-queries 43]
    python benchmarks/bench_rank.py --sweep-candidates 2,5,10,20,40,100 --sweep-only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iranker.backends.transformers import TransformersBackend
from iranker.data.public import dl19, movielens_requests
from iranker.devices import cpu_info
from iranker.metrics import ndcg_at_k, random_ndcg_at_k
from iranker.prompts import build_context, iterative_prompt
from iranker.ranker import IterativeRanker, RankerConfig


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def latency_sweep(backend, shared: Path, counts: list[int], repeats: int) -> dict:
    """Ranking latency against the number of candidates: for each N in `counts`, the first N candidates of one DL19
    query's BM25 list and of one MovieLens-100K user's list (a count over what a list holds is skipped), ranked by
    the cached iterative ranker (median of `repeats` after a warm-up); the floor, one pass over the prompt listing
    all N, where N fits one window."""
    cfg = RankerConfig(layout="cached", batch_size=1)
    ranker = IterativeRanker(backend, cfg)
    queries, _ = dl19(shared, depth=max(max(counts), 20))
    lists = {"passage (DL19 BM25)": queries[0][1],
             "recommendation (MovieLens-100K user)": movielens_requests(shared, 1)[0][1]}
    by_scenario: dict[str, list[dict]] = {}
    for name, full in lists.items():
        rows = by_scenario.setdefault(name, [])
        for n in counts:
            if n > len(full.candidates):
                print(f"[bench] sweep {name}: {n} candidates skipped (the list holds {len(full.candidates)})",
                      file=sys.stderr)
                continue
            req = full.model_copy(update={"candidates": full.candidates[:n]})
            ours = timed(lambda r=req: ranker.rank(r), repeats)
            usage = ranker.rank(req).usage
            row = {"candidates": n, "ours_s": ours, "llm_calls": usage.llm_calls,
                   "tokens_encoded": usage.prompt_tokens, "prompt_tokens": None, "floor_s": None}
            if n <= cfg.window:
                prompt = iterative_prompt(build_context(req), list(range(n)))
                row["prompt_tokens"] = len(backend.encoder.encode(prompt))
                row["floor_s"] = timed(lambda p=prompt: backend.choose([p]), repeats)
            rows.append(row)
            print(f"[bench] sweep {name}: {n} candidates, ours {ours:.2f}s"
                  + (f", floor {row['floor_s']:.2f}s" if row["floor_s"] is not None else ""), file=sys.stderr)
    return {"model": backend.name, "device": str(backend.device), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "cpu": cpu_info(), "repeats": repeats, "layout": "cached",
            "window": cfg.window, "stride": cfg.stride, "available": {name: len(full.candidates) for name, full in lists.items()}, "by_scenario": by_scenario}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_rank.json"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--quality-queries", type=int, default=43, help="DL19 queries for the layout comparison (0: skip)")
    ap.add_argument("--sweep-candidates", default="",
                    help="comma-separated candidate counts (e.g. 2,5,10,20,40,100): record latency against the "
                         "number of candidates under `latency_by_candidates` (default: no sweep)")
    ap.add_argument("--sweep-only", action="store_true",
                    help="run only the sweep and merge it into --out, keeping the file's other sections")
    args = ap.parse_args()
    counts = sorted({int(x) for x in args.sweep_candidates.split(",") if x.strip()})
    if args.sweep_only and not counts:
        ap.error("--sweep-only needs --sweep-candidates")
    if counts and counts[0] < 2:
        ap.error("--sweep-candidates: every count must be at least 2")
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    shared = Path(args.shared)
    if not shared.exists():
        sys.exit(f"public data not found at {shared} (--shared)")
    torch.set_num_threads(torch.get_num_threads())
    backend = TransformersBackend(args.model)
    out = Path(args.out)
    if args.sweep_only:
        result = json.loads(out.read_text()) if out.exists() else {
            "model": backend.name, "device": str(backend.device), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine()}
        result["latency_by_candidates"] = latency_sweep(backend, shared, counts, args.repeats)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["latency_by_candidates"], indent=1))
        return
    queries, qrels = dl19(shared, depth=20)
    users = [r for _, r in movielens_requests(shared, max(args.batch, 1))]
    cached = IterativeRanker(backend, RankerConfig(layout="cached", batch_size=1))
    naive = IterativeRanker(backend, RankerConfig(layout="relist", batch_size=1))
    result = {"model": backend.name, "device": str(backend.device), "torch_threads": torch.get_num_threads(),
              "machine": platform.machine(), "candidates": 20, "repeats": args.repeats, "speed": {}}

    for name, req in (("passage (DL19 BM25 top-20)", queries[0][1]), ("recommendation (MovieLens-100K user)", users[0])):
        prompt = iterative_prompt(build_context(req), list(range(20)))
        n_tokens = len(backend.encoder.encode(prompt))
        print(f"[bench] {name}: prompt of {n_tokens} tokens", file=sys.stderr)
        floor = timed(lambda p=prompt: backend.choose([p]), args.repeats)
        ours = timed(lambda r=req: cached.rank(r), args.repeats)
        slow = timed(lambda r=req: naive.rank(r), max(1, args.repeats - 2))
        row = {"prompt_tokens": n_tokens, "floor_s": floor, "ours_s": ours, "naive_s": slow,
               "ours_over_floor": ours / floor, "naive_over_ours": slow / ours,
               "tokens_encoded": {"ours": cached.rank(req).usage.prompt_tokens,
                                  "naive": naive.rank(req).usage.prompt_tokens},
               "goals_met": {"ours <= 2x floor": ours / floor <= 2.0, "naive >= 5x ours": slow / ours >= 5.0}}
        result["speed"][name] = row
        print(f"[bench]   floor {floor:.2f}s  ours {ours:.2f}s ({ours / floor:.2f}x floor)  naive {slow:.2f}s "
              f"({slow / ours:.1f}x ours)", file=sys.stderr)

    result["batching"] = {}
    for name, reqs in (("passage (DL19 BM25 top-20)", [r for _, r in queries[: args.batch]]),
                       ("recommendation (MovieLens-100K users)", users[: args.batch])):
        one = IterativeRanker(backend, RankerConfig(batch_size=1))
        many = IterativeRanker(backend, RankerConfig(batch_size=args.batch))
        t = time.perf_counter()
        singles = [one.rank(r) for r in reqs]
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        batched = many.rank_many(reqs)
        t_many = time.perf_counter() - t
        same = [r.ranking for r in batched] == [r.ranking for r in singles]
        result["batching"][name] = {"instances": len(reqs), "one_by_one_s": t_one, "batched_s": t_many,
                                    "throughput_ratio": t_one / t_many, "same_rankings": same,
                                    "goal_met": t_one / t_many >= 2.0}
        print(f"[bench] batching {name}: one by one {t_one:.1f}s, batch of {len(reqs)} {t_many:.1f}s "
              f"-> {t_one / t_many:.2f}x throughput (same rankings: {same})", file=sys.stderr)

    if args.quality_queries:
        sub = queries[: args.quality_queries]
        reqs = [r for _, r in sub]
        quality = {"queries": len(sub), "metric": "ndcg@10 (trec_eval gain, unjudged = 0), BM25 top-20 re-ranked"}
        quality["bm25 (first stage)"] = statistics.mean(
            ndcg_at_k([c.id for c in r.candidates], qrels.get(q, {}), 10) for q, r in sub)
        quality["random (expected)"] = statistics.mean(
            random_ndcg_at_k([c.id for c in r.candidates], qrels.get(q, {}), 10) for q, r in sub)
        for layout in ("cached", "relist"):
            resps = IterativeRanker(backend, RankerConfig(layout=layout, batch_size=args.batch)).rank_many(
                reqs, progress=True)
            quality[f"iterative, {layout} layout"] = statistics.mean(
                ndcg_at_k(resp.ranking, qrels.get(q, {}), 10) for (q, _), resp in zip(sub, resps))
            print(f"[bench] quality {layout}: nDCG@10 {quality[f'iterative, {layout} layout']:.4f}", file=sys.stderr)
        result["quality"] = quality

    if counts:
        result["latency_by_candidates"] = latency_sweep(backend, shared, counts, args.repeats)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
