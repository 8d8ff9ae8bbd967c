import itertools
import math

import pytest

from iranker.metrics import (
    instance_metrics,
    ndcg_at_k,
    random_hit_at_k,
    random_instance_metrics,
    random_ndcg_at_k,
    random_reciprocal_rank,
    ranking_to_run,
    reciprocal_rank,
    score_run,
)


def test_hand_computed_values():
    rel = {"a": 3, "b": 1}
    assert reciprocal_rank(["x", "b", "a"], rel) == 0.5
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 + 1 / math.log2(3)
    assert ndcg_at_k(["x", "b", "a"], rel, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["x"], {}, 10) == 0.0  # nothing relevant: 0, as trec_eval
    # judged-relevant candidates missing from the ranking still count in the ideal
    assert ndcg_at_k(["b"], rel, 10) < 1.0


@pytest.mark.parametrize("n, rel", [(4, {"c0": 1}), (5, {"c1": 2, "c3": 1}), (4, {"c0": 1, "c1": 1, "c2": 3})])
def test_random_expectations_equal_the_mean_over_all_permutations(n, rel):
    ids = [f"c{i}" for i in range(n)]
    perms = list(itertools.permutations(ids))
    exact = {k: sum(instance_metrics(p, rel, (1, 3))[k] for p in perms) / len(perms)
             for k in instance_metrics(ids, rel, (1, 3))}
    assert random_instance_metrics(ids, rel, (1, 3)) == pytest.approx(exact)


def test_random_reference_values():
    assert random_reciprocal_rank(20, 1) == pytest.approx(sum(1 / r for r in range(1, 21)) / 20)  # 0.180
    assert round(random_reciprocal_rank(20, 1), 3) == 0.180
    assert random_hit_at_k(20, 1, 10) == pytest.approx(0.5)
    assert random_ndcg_at_k(["a", "b"], {"a": 1}, 1) == pytest.approx(0.5)


def test_bm25_on_dl19_matches_the_reference_and_ir_measures(shared_data):
    """BM25 top-100 on TREC DL 2019 passages, unjudged = 0: nDCG@10 = 0.5058 (trec_eval)."""
    from conftest import dl19

    runs, qrels = dl19(shared_data)
    run = {qid: {d: s for d, _, s in hits} for qid, _, hits in runs}
    lib = score_run(run, qrels, ["ndcg@10", "mrr"])
    ours = sum(ndcg_at_k([d for d, _, _ in hits], qrels.get(qid, {}), 10) for qid, _, hits in runs) / len(runs)
    assert round(lib["ndcg@10"], 4) == 0.5058
    assert ours == pytest.approx(lib["ndcg@10"], abs=1e-9)
    ours_rr = sum(reciprocal_rank([d for d, _, _ in hits], qrels.get(qid, {})) for qid, _, hits in runs) / len(runs)
    assert ours_rr == pytest.approx(lib["mrr"], abs=1e-9)


def test_ranking_to_run_keeps_the_order():
    run = ranking_to_run(["b", "a"])
    assert score_run({"q": run}, {"q": {"a": 1}}, ["mrr"])["mrr"] == 0.5


def test_the_paired_test_is_fishers_randomization_and_the_interval_a_bootstrap_of_the_mean():
    """With few instances scipy enumerates every sign flip: the p-value equals the exact two-sided count."""
    import itertools

    import numpy as np

    from iranker.metrics import bootstrap_interval, paired_comparison

    a, b = [0.9, 0.7, 0.8, 0.4, 0.6, 0.75], [0.5, 0.6, 0.9, 0.3, 0.2, 0.55]
    d = np.subtract(a, b)
    flips = [abs(np.mean(np.multiply(signs, d))) >= abs(d.mean()) - 1e-12
             for signs in itertools.product([-1, 1], repeat=d.size)]
    r = paired_comparison(a, b)
    assert r["p_value"] == pytest.approx(sum(flips) / len(flips))
    assert r["low"] <= r["diff"] <= r["high"] and (r["wins"], r["losses"], r["ties"]) == (5, 1, 0)
    assert paired_comparison([0.5, 0.5], [0.5, 0.5])["p_value"] == 1.0  # no difference at all
    one = paired_comparison([0.9], [0.4])  # one instance: both flips are as extreme, and the interval is the value
    assert (one["p_value"], one["low"], one["high"]) == (1.0, pytest.approx(0.5), pytest.approx(0.5))
    lo, hi = bootstrap_interval(list(np.linspace(0, 1, 101)), seed=3)
    assert 0.43 < lo < 0.5 < hi < 0.57 and bootstrap_interval([0.3]) == (0.3, 0.3)
