"""The order a pool is listed in: the first stage's (what a user's existing system puts first) or shuffled.

- `first-stage`: recommendation by the items' interaction counts (popularity; more ratings, then a higher mean
  rating first), routing by the best average for the preference (a*quality - b*price/highest price, the weights of
  `iranker.schema.PREFERENCE_WEIGHTS`), passage by the retriever's rank. Read from the candidates' features
  (`iranker.schema.CandidateFeatures`); candidates without them follow in their given order.
- `shuffled`: a seeded shuffle per instance, so that position tells nothing and the model must read content.
- `as-given`: the order the data or the request has.

Training lists a share of its instances each way (`listing` in a training profile); evaluation reports both
orders (`iranker evaluate --orders`); the first-stage baseline ranks by the first-stage order whatever the listing.
"""

from __future__ import annotations

from iranker.io import seeded_rng
from iranker.schema import PREFERENCE_WEIGHTS, RankingInstance

ORDERS = ("first-stage", "shuffled", "as-given")


def first_stage_order(inst: RankingInstance) -> list[int]:
    """Candidate positions in the first stage's order (see the module doc); ties keep the given order."""
    cands = inst.candidates
    if inst.scenario == "passage":
        key = [(c.features.rank if c.features and c.features.rank is not None else float("inf"),) for c in cands]
    elif inst.scenario == "recommendation":
        key = [(-(c.features.ratings or 0) if c.features else 1, -(c.features.mean_rating or 0) if c.features
                else 0) for c in cands]
    else:
        a, b = PREFERENCE_WEIGHTS.get(inst.preference or "", (1.0, 0.0))
        prices = [c.features.price for c in cands if c.features and c.features.price is not None]
        top = max(prices, default=0.0) or 1.0
        key = [(-(a * c.features.quality - b * c.features.price / top),)
               if c.features and c.features.quality is not None and c.features.price is not None else (float("inf"),)
               for c in cands]
    return sorted(range(len(cands)), key=lambda i: (*key[i], i))


def listed(inst: RankingInstance, order: str, seed: int = 0) -> RankingInstance:
    """The instance with its candidates listed in `order` (one of ORDERS)."""
    if order not in ORDERS:
        raise ValueError(f"listing order: expected one of {', '.join(ORDERS)}, got {order!r}")
    if order == "as-given":
        return inst
    idx = first_stage_order(inst) if order == "first-stage" else list(range(len(inst.candidates)))
    if order == "shuffled":
        seeded_rng(seed, "listing", inst.id).shuffle(idx)
    return inst.model_copy(update={"candidates": [inst.candidates[i] for i in idx]})
