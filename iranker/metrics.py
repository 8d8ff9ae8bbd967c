"""Per-instance ranking metrics and their expected value under a random ranking.

Small pure functions, cheap enough for the reward and the ranker to call in a hot loop. Whole runs are scored
with `ir_measures` (trec_eval's implementation) in `score_run`; the tests check that both agree.

Conventions (trec_eval): graded gain is linear (gain = grade), discount 1/log2(rank + 1), the ideal ordering is
built from every judged grade of the instance, including judged candidates the ranking does not contain.
A candidate is relevant for MRR and Hit@k when its grade >= `min_grade` (default 1, trec_eval's default).

Intervals and significance come from `scipy.stats` (percentile bootstrap; Fisher's paired randomization test).
`ranx` is not used: whole runs already go through trec_eval's own implementation (`ir_measures`), the per-instance
functions run inside the reward's hot loop where a numba-compiled library adds a compile step and nothing else,
and the random expectations (exact, per instance) have no equivalent there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache


def _discount(rank: int) -> float:  # rank is 1-based
    return 1.0 / math.log2(rank + 1)


def dcg_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    return sum(relevance.get(cid, 0.0) * _discount(i + 1) for i, cid in enumerate(ranking[:k]))


def ideal_dcg_at_k(relevance: Mapping[str, float], k: int) -> float:
    grades = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    return sum(g * _discount(i + 1) for i, g in enumerate(grades))


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """Graded NDCG@k. 0 when nothing is relevant (trec_eval's convention).

    >>> round(ndcg_at_k(["a", "b"], {"b": 1}, 10), 4)
    0.6309
    """
    ideal = ideal_dcg_at_k(relevance, k)
    return dcg_at_k(ranking, relevance, k) / ideal if ideal > 0 else 0.0


def reciprocal_rank(ranking: Sequence[str], relevance: Mapping[str, float], min_grade: float = 1.0) -> float:
    """1 / rank of the first relevant candidate; 0 when none is ranked. `mrr` of one instance."""
    for i, cid in enumerate(ranking):
        if relevance.get(cid, 0.0) >= min_grade:
            return 1.0 / (i + 1)
    return 0.0


def hit_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int, min_grade: float = 1.0) -> float:
    return float(any(relevance.get(cid, 0.0) >= min_grade for cid in ranking[:k]))


# ---- expected values under a uniformly random permutation of the candidates -------------------------------------

@lru_cache(maxsize=4096)
def random_reciprocal_rank(n: int, n_relevant: int) -> float:
    """E[1/rank of the first relevant] for a random order of n candidates of which n_relevant are relevant."""
    if n_relevant <= 0 or n <= 0:
        return 0.0
    total = math.comb(n, n_relevant)
    return sum(math.comb(n - r, n_relevant - 1) / total / r for r in range(1, n - n_relevant + 2))


def random_hit_at_k(n: int, n_relevant: int, k: int) -> float:
    if n_relevant <= 0:
        return 0.0
    k = min(k, n)
    return 1.0 - math.comb(n - n_relevant, k) / math.comb(n, k)


def random_ndcg_at_k(candidate_ids: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """E[NDCG@k] of a random order of `candidate_ids`: each position holds the mean gain of the candidates."""
    ideal = ideal_dcg_at_k(relevance, k)
    if ideal <= 0 or not candidate_ids:
        return 0.0
    mean_gain = sum(relevance.get(c, 0.0) for c in candidate_ids) / len(candidate_ids)
    return mean_gain * sum(_discount(i + 1) for i in range(min(k, len(candidate_ids)))) / ideal


def instance_metrics(ranking: Sequence[str], relevance: Mapping[str, float], ks: Sequence[int] = (1, 3, 5, 10),
                     min_grade: float = 1.0) -> dict[str, float]:
    """All per-instance metrics under their report names: mrr, ndcg@k, hit@k."""
    out = {"mrr": reciprocal_rank(ranking, relevance, min_grade)}
    for k in ks:
        out[f"ndcg@{k}"] = ndcg_at_k(ranking, relevance, k)
        out[f"hit@{k}"] = hit_at_k(ranking, relevance, k, min_grade)
    return out


def random_instance_metrics(candidate_ids: Sequence[str], relevance: Mapping[str, float],
                            ks: Sequence[int] = (1, 3, 5, 10), min_grade: float = 1.0) -> dict[str, float]:
    """The expected value of every metric of `instance_metrics` under a random ranking of the same candidates."""
    n = len(candidate_ids)
    n_rel = sum(1 for c in candidate_ids if relevance.get(c, 0.0) >= min_grade)
    out = {"mrr": random_reciprocal_rank(n, n_rel)}
    for k in ks:
        out[f"ndcg@{k}"] = random_ndcg_at_k(candidate_ids, relevance, k)
        out[f"hit@{k}"] = random_hit_at_k(n, n_rel, k)
    return out


# ---- whole runs, scored by trec_eval's implementation --------------------------------------------------------------

_IR_MEASURES = {"mrr": "RR(rel={g})", "ndcg@{k}": "nDCG@{k}", "hit@{k}": "Success(rel={g})@{k}"}


def score_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
              metrics: Sequence[str] = ("ndcg@10", "mrr"), min_grade: int = 1) -> dict[str, float]:
    """Mean of each metric over the queries of `run` ({qid: {docid: score}}), scored by ir_measures (trec_eval).

    Queries without judgments count as 0, as in trec_eval with `-c`; qrels grades must be integers.
    """
    import ir_measures

    names = {}
    for m in metrics:
        if m == "mrr":
            names[m] = ir_measures.parse_measure(_IR_MEASURES["mrr"].format(g=min_grade))
        elif m.startswith("ndcg@"):
            names[m] = ir_measures.parse_measure(f"nDCG@{int(m.split('@')[1])}")
        elif m.startswith("hit@"):
            names[m] = ir_measures.parse_measure(f"Success(rel={min_grade})@{int(m.split('@')[1])}")
        else:
            raise ValueError(f"metrics: unknown metric {m!r}; expected mrr, ndcg@k or hit@k")
    q = {qid: {d: int(g) for d, g in docs.items()} for qid, docs in qrels.items()}
    r = {qid: {d: float(s) for d, s in docs.items()} for qid, docs in run.items()}
    per_query: dict[str, dict[str, float]] = {qid: {m: 0.0 for m in metrics} for qid in r}
    inverse = {v: k for k, v in names.items()}
    for row in ir_measures.iter_calc(list(names.values()), q, r):
        per_query[row.query_id][inverse[row.measure]] = float(row.value)
    n = max(len(per_query), 1)
    return {m: sum(v[m] for v in per_query.values()) / n for m in metrics}


def ranking_to_run(ranking: Sequence[str]) -> dict[str, float]:
    """A ranking as a run's scores (higher = better), for `score_run`."""
    n = len(ranking)
    return {cid: float(n - i) for i, cid in enumerate(ranking)}


# ---- intervals and paired significance --------------------------------------------------------------------------

def bootstrap_interval(values: Sequence[float], n_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-instance values (`scipy.stats.bootstrap`, seeded, so reports
    are reproducible); a single value, or values that are all the same, is its own interval."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (0.0, 0.0)
    if x.size == 1 or bool(np.all(x == x[0])):
        return (float(x[0]), float(x[0]))
    ci = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                         random_state=seed, vectorized=True).confidence_interval
    return float(ci.low), float(ci.high)


def _mean_difference(a, b, axis=-1):
    import numpy as np

    return np.mean(a - b, axis=axis)


def paired_comparison(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, level: float = 0.95,
                      seed: int = 0) -> dict[str, float]:
    """System a against system b on the same instances: mean difference a-b with its paired bootstrap interval,
    the relative change, and the two-sided p-value of a paired randomization test (Fisher's: the sign of each
    instance's difference flipped, `scipy.stats.permutation_test` with paired samples; exact for small sets).

    >>> r = paired_comparison([1, 1, 1, 0.5], [0.5, 0.5, 0.5, 0.5]); r["diff"], r["wins"], r["losses"]
    (0.375, 3, 0)
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired comparison needs the same instances: {x.size} values against {y.size}")
    d = x - y
    lo, hi = bootstrap_interval(d, n_resamples=min(n_resamples, 4000), level=level, seed=seed)
    p = 1.0  # no difference, or one instance: every sign flip is as far from 0 as the observed mean
    if d.size > 1 and bool(np.any(d != 0)):
        p = float(stats.permutation_test((x, y), _mean_difference, permutation_type="samples",
                                         n_resamples=n_resamples, random_state=seed, vectorized=True).pvalue)
    base = y.mean() if y.size else 0.0
    return {"diff": float(d.mean()) if d.size else 0.0, "low": lo, "high": hi, "p_value": p,
            "relative": float(d.mean() / base) if base else 0.0, "wins": int((d > 0).sum()),
            "losses": int((d < 0).sum()), "ties": int((d == 0).sum())}
