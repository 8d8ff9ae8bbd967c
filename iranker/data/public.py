"""Shortcuts to the public data in ../shared/data for benchmarks and tests, built by the real adapters.

- TREC DL 2019: the `trec-dl` adapter on `passage/` (first-stage top-`depth` with texts) and its qrels;
- MovieLens-100K: the `recbole` adapter on `recommendation/ml-100k` (first 20 ratings as history, the 21st as target,
  19 random unseen negatives, shuffled, seeded).
"""

from __future__ import annotations

from pathlib import Path

from iranker.data import build
from iranker.schema import RankRequest


def dl19(shared: str | Path, depth: int = 20, first_stage: str = "bm25"
         ) -> tuple[list[tuple[str, RankRequest]], dict[str, dict[str, int]]]:
    """([(qid, RankRequest in first-stage order)], every qrels judgment {qid: {docid: grade}})."""
    built = build("trec-dl", Path(shared) / "passage", {"first_stage": f"*{first_stage}*", "depth": str(depth),
                                                        "dataset": "dl19"})
    qrels: dict[str, dict[str, int]] = {}
    for q, d, g in built.tables["qrels"].itertuples(index=False):
        qrels.setdefault(q, {})[d] = int(g)
    return [(i.id.removeprefix("dl19-q"), i.to_request()) for i in built.instances], qrels


def movielens_requests(shared: str | Path, n_users: int, seed: int = 0) -> list[tuple[str, RankRequest]]:
    """[(target item id, RankRequest)] of the first `n_users` users (by id) with more than 20 ratings."""
    built = build("recbole", Path(shared) / "recommendation" / "ml-100k",
                  {"seed": str(seed), "max_users": str(n_users)})
    return [(next(iter(i.relevance)), i.to_request()) for i in built.instances]
