"""Training data as elimination decisions: instances, pools in the serving layout, reward rows, GAE.

A decision (`Step`) is one elimination from a pool, shown as serving shows it. In the cached layout (the default)
the prompt lists the instance's candidates once (`listing`, at most the serving window), labels A.. in listing
order, and the pool is the subset still visible (`pool`, positions in the listing); the eliminated ones are masked
out of what the step's cue sees. In the relist layout the listing is the pool itself, relabelled A...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iranker.io import seeded_rng
from iranker.prompts import MAX_POOL
from iranker.rewards import exclusion_score
from iranker.schema import RankingInstance


@dataclass
class Step:
    inst: int            # index into the trainer's contexts (training instances, then probe instances)
    listing: list[int]   # candidate indices in prompt order: label j is listing[j]
    pool: list[int]      # positions in `listing` still in the pool, ascending
    grades: list[float]  # grade of every listing position

    @property
    def pool_grades(self) -> list[float]:
        return [self.grades[j] for j in self.pool]


class TrainingSet:
    """The training instances with their prompt contexts (sanitised once) and their indices by scenario."""

    def __init__(self, instances: list[RankingInstance], max_words: int):
        from iranker.prompts import build_context

        self.instances = instances
        self.contexts = [build_context(i.to_request(), max_words=max_words) for i in instances]
        self.by_scenario: dict[str, list[int]] = {}
        for k, inst in enumerate(instances):
            self.by_scenario.setdefault(inst.scenario, []).append(k)

    def draw(self, rng, mix: str) -> int:
        """An instance index: the scenario first, uniformly (`balanced`), or in proportion to the instances."""
        if mix == "balanced":
            return rng.choice(self.by_scenario[rng.choice(sorted(self.by_scenario))])
        return rng.randrange(len(self.instances))


def sample_pool(rng, inst: RankingInstance, cfg) -> list[int] | None:
    """Random sub-pool (candidate indices) whose grades differ (a pool of equals teaches nothing); None if the
    instance has none. Pool sizes are weighted k**-small_bias; candidates come from the first `window`."""
    n = min(len(inst.candidates), cfg.ranking.window)
    grades = [inst.grade(c.id) for c in inst.candidates[:n]]
    if len(set(grades)) < 2:
        return None
    hi = min(cfg.pools.max_size, n)
    lo = min(cfg.pools.min_size, hi)
    sizes = list(range(lo, hi + 1))
    weights = [k ** -cfg.pools.small_bias for k in sizes]
    for _ in range(50):
        k = rng.choices(sizes, weights=weights)[0]
        pool = rng.sample(range(n), k)
        if len({grades[i] for i in pool}) > 1:
            return pool
    return None


def layout_steps(inst_index: int, inst: RankingInstance, pool: list[int], layout: str, window: int,
                 balance: bool) -> list[Step]:
    """The step(s) showing a sampled pool (candidate indices) as the layout shows it.

    With `balance`, one step per cyclic order of the pool's members over the label positions the pool occupies:
    every member takes every one of those positions once, so a preference for a position earns nothing.
    """
    grades_all = [inst.grade(c.id) for c in inst.candidates]
    members = sorted(pool)  # in the request's order (e.g. the first stage's), as serving lists them
    orders = cyclic_orders(members) if balance else [members]
    steps = []
    for order in orders:
        if layout == "relist":
            listing, positions = list(order), list(range(len(order)))
        else:
            listing = list(range(min(len(inst.candidates), window)))
            for slot, cand in zip(members, order, strict=True):  # a rotation moves members among their own slots
                listing[slot] = cand
            positions = members
        steps.append(Step(inst_index, listing, positions, [grades_all[i] for i in listing]))
    return steps


def cyclic_orders(pool: list[int]) -> list[list[int]]:
    """The k cyclic orders of a pool of k: each candidate at each label position once.

    >>> cyclic_orders([7, 3, 5])
    [[7, 3, 5], [3, 5, 7], [5, 7, 3]]
    """
    return [pool[s:] + pool[:s] for s in range(len(pool))]


def reward_row(grades: list[float], pool: list[int] | None = None) -> torch.Tensor:
    """The exclusion reward of eliminating each label (listing position) of a pool; 0 outside the pool.

    >>> reward_row([0, 3, 1], pool=[0, 2])[:3].tolist()
    [1.0, 0.0, 0.0]
    """
    pool = list(range(len(grades))) if pool is None else pool
    labels = {chr(65 + j): grades[j] for j in pool}
    row = torch.zeros(MAX_POOL)
    for j in pool:
        row[j] = exclusion_score(chr(65 + j), labels)
    return row


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns of one episode (the value after the last step is 0)."""
    adv = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def serving_windows(inst: RankingInstance, window: int, stride: int) -> list[RankingInstance]:
    """An instance longer than the window, cut into the windows serving ranks it in (the last `window`
    candidates, then up by `stride` until the top; `iranker.ranker`): one training instance per window."""
    n = len(inst.candidates)
    if n <= window:
        return [inst]
    out, start = [], n - window
    while True:
        cands = inst.candidates[start: start + window]
        ids = {c.id for c in cands}
        out.append(inst.model_copy(update={"id": f"{inst.id}#w{start}", "candidates": cands,
                                           "relevance": {k: v for k, v in inst.relevance.items() if k in ids}}))
        if start == 0:
            return out
        start = max(start - stride, 0)


def load_training_instances(cfg, split: str = "train") -> list[RankingInstance]:
    """The instances of `split` in the profile's data whose grades differ, with their candidates' features,
    listed in the first stage's order or shuffled (`cfg.listing`), cut into the serving windows when longer than
    one, seeded-shuffled, capped."""
    from iranker.features import load_with_features
    from iranker.listing import listed

    out: list[RankingInstance] = [
        listed(i, "first-stage" if seeded_rng(cfg.seed, "listing-order", i.id).random() < cfg.listing else "shuffled",
               cfg.seed)
        for i in load_with_features(cfg.data, cfg.hide_task, cfg.seed)]
    out = [w for i in out for w in serving_windows(i, cfg.ranking.window, cfg.ranking.stride)]
    chosen = [i for i in out if i.split == split and len({i.grade(c.id) for c in i.candidates}) > 1
              and (not cfg.train_scenarios or i.scenario in cfg.train_scenarios)]
    if split == "train" and cfg.train_scenarios:
        missing = sorted(set(cfg.train_scenarios) - {i.scenario for i in chosen})
        if missing:
            raise ValueError(f"train_scenarios: no training instances of {', '.join(missing)} in "
                             f"{', '.join(cfg.data)}")
    if not chosen:
        if split != "train":
            return []
        raise ValueError(f"data: no training instances (split 'train' with differing grades) in {', '.join(cfg.data)}")
    seeded_rng(cfg.seed, "instances").shuffle(chosen)
    return chosen[: cfg.max_instances] if cfg.max_instances else chosen
