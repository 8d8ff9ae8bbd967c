"""Listing order as a setting: the first stage's order or shuffled; training mixes both, evaluation reports both."""

from __future__ import annotations

import pytest

from iranker.evaluate.baselines import first_stage
from iranker.listing import first_stage_order, listed
from iranker.schema import RankingInstance


def _inst(scenario, feats, **kw):
    base = {"passage": {"query": "q"}, "routing": {"query": "q", "preference": "cost"},
            "recommendation": {"history": ["h"]}}[scenario]
    return RankingInstance(id=f"{scenario}-1", scenario=scenario, dataset="d", **base, **kw,
                           candidates=[{"id": f"c{k}", "text": "t", "features": f} for k, f in enumerate(feats)])


def test_first_stage_order_per_scenario():
    rec = _inst("recommendation", [{"ratings": 3, "mean_rating": 4.0}, {"ratings": 9}, None, {"ratings": 3,
                                                                                            "mean_rating": 4.5}])
    assert first_stage_order(rec) == [1, 3, 0, 2]  # most ratings first, then the higher mean; unknown last
    passage = _inst("passage", [{"rank": 3}, {"rank": 1}, {"rank": 2}])
    assert first_stage_order(passage) == [1, 2, 0]
    # cost first (a=0.2, b=0.8): 0.2*q - 0.8*price/max price
    routing = _inst("routing", [{"quality": 0.9, "price": 1.0}, {"quality": 0.5, "price": 0.1},
                                {"quality": 0.8, "price": 0.5}])
    assert first_stage_order(routing) == [1, 2, 0]
    perf = routing.model_copy(update={"preference": "performance"})
    assert first_stage_order(perf) == [0, 2, 1]


def test_shuffled_is_a_seeded_permutation_and_the_first_stage_baseline_ignores_the_listing():
    inst = _inst("passage", [{"rank": k + 1} for k in range(12)])
    a, b = listed(inst, "shuffled", 0), listed(inst, "shuffled", 0)
    assert [c.id for c in a.candidates] == [c.id for c in b.candidates] != [c.id for c in inst.candidates]
    assert sorted(c.id for c in a.candidates) == sorted(c.id for c in inst.candidates)
    assert first_stage([a]) == first_stage([inst]) == [[f"c{k}" for k in range(12)]]
    assert listed(inst, "as-given") is inst
    with pytest.raises(ValueError, match="listing order: expected one of first-stage, shuffled, as-given"):
        listed(inst, "by-length")


def test_training_mixes_both_orders_and_evaluation_reports_both():
    from iranker.evaluate.harness import load_eval_data
    from iranker.train.config import TrainConfig
    from iranker.train.pools import load_training_instances

    cfg = TrainConfig.model_validate({"model": "tiny-random", "data": ["samples"], "listing": 0.5})
    loaded = [i for i in load_training_instances(cfg) if i.scenario == "passage" or i.scenario == "routing"]
    in_first_stage = [[c.id for c in i.candidates] == first_stage([i])[0] for i in loaded]
    assert any(in_first_stage) and not all(in_first_stage)
    only = TrainConfig.model_validate({"model": "tiny-random", "data": ["samples"], "listing": 1.0})
    assert all([c.id for c in i.candidates] == first_stage([i])[0] for i in load_training_instances(only))

    data = load_eval_data(["samples"], split="test")
    names = {i.dataset for i in data.instances}
    assert {n for n in names if not n.endswith("@shuffled")} and {n for n in names if n.endswith("@shuffled")}
    plain = [i for i in data.instances if "@" not in i.id]
    assert all([c.id for c in i.candidates] == first_stage([i])[0] for i in plain)
    assert len(data.instances) == 2 * len(plain)


def test_a_long_instance_trains_in_the_windows_serving_ranks_it_in():
    from iranker.train.pools import serving_windows

    inst = _inst("passage", [{"rank": k + 1} for k in range(45)], relevance={"c3": 2.0, "c40": 1.0})
    wins = serving_windows(inst, 20, 10)
    assert [w.id for w in wins] == ["passage-1#w25", "passage-1#w15", "passage-1#w5", "passage-1#w0"]
    assert [len(w.candidates) for w in wins] == [20] * 4
    assert wins[0].relevance == {"c40": 1.0} and wins[-1].relevance == {"c3": 2.0}
    assert serving_windows(inst.model_copy(update={"candidates": inst.candidates[:20], "relevance": {}}), 20, 10) \
        [0].id == "passage-1"
