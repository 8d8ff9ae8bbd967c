"""Collect thought templates without training: rank sub-pools of training instances in reasoning mode and keep each
decision's thought when it removed a candidate of the pool's lowest grade (`iranker thoughts collect`).

A reasoning-mode training run keeps its rewarded thoughts itself (`RUN/thoughts/`, copied into `RUN/final/`); this is
the way to get a store from a model that was not trained in reasoning mode - the paper's templates for a zero-shot
model. Sub-pools are small (`pool_size`) because every step of reasoning mode generates up to `max_new_tokens`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from iranker.io import seeded_rng
from iranker.ranker import PARSE_FAILURE, rank_requests
from iranker.rewards import exclusion_score
from iranker.schema import RankingInstance, RankResponse
from iranker.thoughts import ThoughtWriter, retrieval_text

log = logging.getLogger(__name__)


def keep_thoughts(writer: ThoughtWriter, inst: RankingInstance, candidates: Sequence[str],
                  response: RankResponse) -> int:
    """Score each elimination of a reasoning-mode response over `candidates` (ids) and keep the rewarded thoughts;
    returns how many were kept."""
    pool = list(candidates)
    text = retrieval_text(inst.scenario, inst.query, inst.history)
    kept = 0
    for e in sorted(response.eliminated, key=lambda e: e.step):
        if e.id not in pool or len(pool) < 2:
            break
        reward = exclusion_score(e.id, {c: inst.grade(c) for c in pool})
        fell_back = (e.reasoning or "").startswith(PARSE_FAILURE)  # no answer was parsed: no thought to keep
        kept += writer.add(inst.scenario, text, None if fell_back else e.reasoning, reward, len(pool))
        pool.remove(e.id)
    return kept


def sub_pools(instances: Sequence[RankingInstance], pool_size: int, per_instance: int, seed: int):
    """(instance, candidate ids) pairs: `per_instance` random pools of `pool_size` from each instance, each holding
    at least two grades (a pool of equal grades rewards every choice and teaches nothing)."""
    for n, inst in enumerate(instances):
        rng = seeded_rng(seed, "thoughts", inst.id)
        ids = [c.id for c in inst.candidates]
        for _ in range(per_instance):
            for _try in range(8):
                pool = rng.sample(ids, min(pool_size, len(ids)))
                if len({inst.grade(c) for c in pool}) > 1:
                    yield n, pool
                    break


def collect_thoughts(backend, config, instances: Sequence[RankingInstance], out: str | Path, pool_size: int = 4,
                     per_instance: int = 1, seed: int = 0, source: str = "", progress: bool = True) -> dict:
    """Rank sub-pools of `instances` in reasoning mode with `backend` and keep the rewarded thoughts in the store
    folder `out` (appended to when it exists). Returns counts."""
    pairs = list(sub_pools(instances, pool_size, per_instance, seed))
    reqs = []
    for n, pool in pairs:
        req = instances[n].to_request(reasoning=True)
        by_id = {c.id: c for c in req.candidates}
        reqs.append(req.model_copy(update={"candidates": [by_id[c] for c in pool]}))
    if progress:
        log.info(f"thoughts: ranking {len(reqs)} pools of {pool_size} in reasoning mode with {backend.name}")
    config = replace(config, thoughts=None)
    kept = failures = 0
    with ThoughtWriter(out, source=source or f"collected with {backend.name}") as writer:
        for start in range(0, len(reqs), config.batch_size):  # kept batch by batch: a stopped run keeps its thoughts
            chunk = slice(start, start + config.batch_size)
            responses = rank_requests(backend, reqs[chunk], config)
            for (n, pool), r in zip(pairs[chunk], responses, strict=True):
                kept += keep_thoughts(writer, instances[n], pool, r)
                failures += r.parse_failures
            if progress:
                log.info(f"thoughts: {min(start + config.batch_size, len(reqs))}/{len(reqs)} pools, "
                         f"{writer.seen} decisions, {kept} kept")
        decisions = writer.seen
    return {"store": str(out), "pools": len(reqs), "decisions": decisions, "kept": kept,
            "parse_failures": failures}
