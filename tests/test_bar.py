"""The shipping bar, computed by code from an evaluation's metrics."""

from iranker.evaluate.bar import bar_met, goals, shortfalls


def _result(dataset, trained, base_low, rand, first, first_low=-0.01):
    return {"dataset": dataset, "scenario": "passage", "primary_metric": "ndcg@10", "n_instances": 20,
            "metrics": {"ndcg@10": trained},
            "baselines": {"base (iterative)": {"ndcg@10": trained - 0.1}, "random (expected)": {"ndcg@10": rand},
                          "first-stage": {"ndcg@10": first}, "bm25": {"ndcg@10": 0.4}},
            "comparison": {"ndcg@10": {"diff": 0.1, "low": base_low, "high": 0.2}},
            "comparison_first_stage": {"ndcg@10": {"diff": trained - first, "low": first_low, "high": 0.1}}}


def test_the_bar_needs_base_random_and_the_first_stage_on_every_dataset():
    ok = {"results": [_result("dl19", 0.60, 0.02, 0.40, 0.55), _result("dl19@shuffled", 0.58, 0.01, 0.40, 0.55)]}
    g = goals(ok)
    assert bar_met(g) and not shortfalls(g)
    assert g["dl19/passage"]["interval_vs_first_stage"] == [-0.01, 0.1]
    assert g["dl19/passage"]["diff_vs_first_stage"] == 0.60 - 0.55
    under_first = {"results": [*ok["results"], _result("dl21", 0.50, 0.03, 0.30, 0.52)]}
    assert not bar_met(goals(under_first))
    assert shortfalls(goals(under_first)) == {"dl21/passage": ["under the first stage (0.500 vs 0.52)"]}
    not_above_base = {"results": [_result("dl19", 0.60, -0.001, 0.40, 0.55)]}
    assert not bar_met(goals(not_above_base))
    under_random = {"results": [_result("dl19", 0.35, 0.02, 0.40, 0.30)]}
    assert shortfalls(goals(under_random)) == {"dl19/passage": ["under random (0.350 vs 0.400)"]}
    assert not bar_met({})
