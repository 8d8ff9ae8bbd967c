"""Elimination steps as prompt rows: the one data layout shared by TRL GRPO and the verl export.

A row is one elimination decision: the chat prompt of a (sub-)pool, exactly as `iranker.prompts` writes it for
ranking, and the grade of every label in the pool (`pool_grades`, a JSON object string so that Arrow/parquet
columns keep one type). The reward of a response is `iranker.rewards` on the response and `pool_grades` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from iranker.io import seeded_rng
from iranker.prompts import build_context, iterative_prompt
from iranker.schema import RankingInstance


def elimination_rows(instances: Sequence[RankingInstance], cfg, n: int, reasoning: bool = True,
                     salt: str = "rows") -> list[dict]:
    """`n` elimination steps: random sub-pools (with differing grades) of instances drawn as the PPO trainer
    draws them (scenario-balanced unless `cfg.mix` is proportional), seeded by `cfg.seed` and `salt`.

    Rows: {"prompt" (a `Prompt`), "pool_grades" (JSON text), "scenario", "dataset", "instance_id", "split",
    "pool_size"}.
    """
    from iranker.train.pools import sample_pool

    rng = seeded_rng(cfg.seed, salt)
    by_scenario: dict[str, list[RankingInstance]] = {}
    for inst in instances:
        by_scenario.setdefault(inst.scenario, []).append(inst)
    contexts: dict[str, object] = {}
    rows: list[dict] = []
    for _ in range(50 * n):
        if len(rows) >= n or not instances:
            break
        group = by_scenario[rng.choice(sorted(by_scenario))] if cfg.mix == "balanced" else instances
        inst = rng.choice(group)
        pool = sample_pool(rng, inst, cfg)
        if pool is None:
            continue
        if inst.id not in contexts:
            contexts[inst.id] = build_context(inst.to_request(), max_words=cfg.ranking.max_words)
        prompt = iterative_prompt(contexts[inst.id], pool, reasoning=reasoning)
        grades = {lab: inst.grade(inst.candidates[i].id) for lab, i in zip(prompt.labels, pool, strict=True)}
        rows.append({"prompt": prompt, "pool_grades": json.dumps(grades), "scenario": inst.scenario,
                     "dataset": inst.dataset, "instance_id": inst.id, "split": inst.split, "pool_size": len(pool)})
    return rows
