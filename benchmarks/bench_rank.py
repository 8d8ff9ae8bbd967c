"""Speed of iterative ranking (fast mode, embedded SmolLM2-135M) against its floor and the naive loop, one run.

For 20 candidates (a TREC DL 2019 query with its BM25 top-20 passages, and a MovieLens-100K user) it measures:
- floor: ONE forward pass over the full prompt (what a single listwise scoring would cost);
- ours: the iterative ranker, cached layout (candidates encoded once, eliminated ones masked out of the cache);
- naive: the published loop, re-listing and re-encoding the whole pool at every step (the relist layout).
Then batching: 16 instances ranked in one batch vs one by one. Then quality: nDCG@10 of both layouts on the DL19
BM25 top-20 of every query, beside BM25's own order and the random expectation on the same instances.

Goals: ours <= 2x floor; naive >= 5x ours; batch of 16 >= 2x the throughput of one by one.

    python benchmarks/bench_rank.py [--out benchmarks/results/bench_rank.json] [--quality-queries 43]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_rank.json"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--quality-queries", type=int, default=43, help="DL19 queries for the layout comparison (0: skip)")
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    shared = Path(args.shared)
    if not shared.exists():
        sys.exit(f"public data not found at {shared} (--shared)")
    torch.set_num_threads(torch.get_num_threads())
    backend = TransformersBackend(args.model)
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

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
