"""The first stage's signals beside each candidate: computed from a dataset's training split, stored as Feast feature
views, read point in time from the offline store, rendered the same way by training, evaluation and serving."""

from __future__ import annotations

import pytest
from conftest import ROOT

from iranker.data import build
from iranker.features import load_with_features, with_candidate_features
from iranker.prompts import build_context, iterative_prompt

SAMPLES = ROOT / "samples"


def _builds(*sources):
    out = []
    for source, path in sources:
        b = build(source, path)
        out.append((b.tables, b.instances, {"source": source, "dataset": b.dataset, "params": b.params,
                                            "scenario": b.instances[0].scenario}))
    return out


def test_item_counts_are_point_in_time_and_from_the_training_split(tmp_path):
    (tables, instances, manifest), = _builds(("recbole", SAMPLES / "recbole"))
    out = {i.id: i for i in with_candidate_features([(tables, instances, manifest)], tmp_path)}
    inter = tables["interactions"]
    train_users = {i.user_id for i in instances if i.split == "train"}
    known = inter[inter["user_id"].astype(str).isin(train_users)]
    checked = 0
    for inst in instances:
        target_time = inter[(inter["user_id"].astype(str) == inst.user_id)
                            & (inter["position"] == len(inst.history))]["timestamp"].item()
        for c in out[inst.id].candidates:
            before = known[(known["item_id"] == c.id) & (known["timestamp"] < target_time)]
            assert c.features.ratings == len(before), (inst.id, c.id)
            if len(before):
                assert c.features.mean_rating == pytest.approx(before["rating"].mean(), abs=1e-4)
                checked += 1
            else:
                assert c.features.mean_rating is None
    assert checked > 20
    # a training user's own target is never counted in its own instance (it happens at the target's time)
    train = next(i for i in instances if i.split == "train")
    target = next(iter(train.relevance))
    mine = inter[(inter["user_id"].astype(str) == train.user_id) & (inter["item_id"] == target)]
    assert len(mine) == 1 and mine["position"].item() == len(train.history)


def test_undated_data_counts_training_histories_only(tmp_path):
    (tables, instances, manifest), = _builds(("llmrank", SAMPLES / "llmrank"))
    out = with_candidate_features([(tables, instances, manifest)], tmp_path)
    inter = tables["interactions"]
    train_users = {i.user_id for i in instances if i.split == "train"}
    last = inter.groupby("user_id")["position"].transform("max")
    hist = inter[inter["user_id"].astype(str).isin(train_users) & (inter["position"] < last)]
    counts = hist["item_id"].value_counts().to_dict()
    for inst in out:
        for c in inst.candidates:
            assert c.features.ratings == counts.get(c.id, 0) and c.features.mean_rating is None


@pytest.mark.parametrize("source", ["llmrank", "routerbench"])
def test_instances_alone_get_features_from_their_training_split(tmp_path, source):
    """A dataset that comes as instances only (the generic `instances` adapter, no tables) gets what its training
    instances tell: an item's count in the training histories, a model's mean grade over the training queries of
    the instance's task family."""
    built = build(source, SAMPLES / source)
    path = tmp_path / "instances.jsonl"
    path.write_text("".join(i.model_dump_json(exclude_none=True) + "\n" for i in built.instances))
    (tables, instances, manifest), = _builds(("instances", path))
    assert not tables
    out = with_candidate_features([(tables, instances, manifest)], tmp_path / "work")
    train = [i for i in instances if i.split == "train"]
    checked = 0
    for inst in out:
        for c in inst.candidates:
            if source == "llmrank":
                count = sum(h == c.text for t in train for h in t.history)
                assert c.features.ratings == count and c.features.mean_rating is None
                checked += count > 0
            else:
                grades = [t.relevance.get(c.id, 0.0) for t in train if any(x.id == c.id for x in t.candidates)
                          and t.task == inst.task]  # the family's training instances
                assert c.features.price is None and c.features.quality == pytest.approx(sum(grades) / len(grades))
                checked += 1
    assert checked > 5


def test_routed_models_show_their_quality_on_the_query_task_family(tmp_path, monkeypatch):
    """A routing instance that names its task family sees each model's price and quality on that family's training
    queries; one whose family training has not measured (on at least MIN_TASK_QUERIES queries), or that names
    none, sees the overall figures."""
    from iranker import features

    (tables, instances, manifest), = _builds(("routerbench", SAMPLES / "routerbench"))
    assert {i.task for i in instances} == {"arc-challenge", "mbpp", "winogrande"}
    # the sample has 3 training queries per family: under the default minimum (5), the overall figures
    few = with_candidate_features([(tables, instances, manifest)], tmp_path / "few")
    hidden = with_candidate_features([(tables, instances, manifest)], tmp_path / "hid", hide_task=1.0)
    assert [[c.features for c in i.candidates] for i in few] == [[c.features for c in i.candidates] for i in hidden]
    monkeypatch.setattr(features, "MIN_TASK_QUERIES", 1)
    out = with_candidate_features([(tables, instances, manifest)], tmp_path / "a")
    q, o = tables["queries"], tables["outcomes"]
    train_q = {i.id[len(i.dataset) + 1: i.id.rindex("-")] for i in instances if i.split == "train"}
    o = o[o["query_id"].isin(train_q) & o["quality"].notna() & o["cost"].notna()]
    o = o.assign(task=o["query_id"].map(dict(zip(q["query_id"], q["task"], strict=True))))
    differs = 0
    for inst in out:
        for c in inst.candidates:
            mine = o[(o["model"] == c.id) & (o["task"] == inst.task)]
            assert len(mine), (inst.task, c.id)
            assert c.features.quality == pytest.approx(mine["quality"].mean())
            assert c.features.price == pytest.approx(mine["cost"].mean())
            overall = o[o["model"] == c.id]["quality"].mean()
            differs += abs(overall - c.features.quality) > 0.05
    assert differs > 10  # the families really differ, so the test can tell them apart
    # hidden (training shows a share so) or unknown: the overall figures
    hidden = with_candidate_features([(tables, instances, manifest)], tmp_path / "b", hide_task=1.0)
    unknown = [i.model_copy(update={"task": "no-such-family"}) for i in instances]
    for insts in (hidden, with_candidate_features([(tables, unknown, manifest)], tmp_path / "c")):
        for inst in insts:
            for c in inst.candidates:
                assert c.features.quality == pytest.approx(o[o["model"] == c.id]["quality"].mean())
    assert all(i.task is None for i in hidden)
    some = with_candidate_features([(tables, instances, manifest)], tmp_path / "d", hide_task=0.3, seed=1)
    assert 0 < sum(i.task is None for i in some) < len(some)
    with pytest.raises(ValueError, match="task: only routing"):
        from iranker.schema import RankRequest

        RankRequest(scenario="passage", query="q", task="mmlu", candidates=[{"id": "a", "text": "t"}])


def test_requests_and_instances_without_features_still_rank_on_text():
    from iranker.schema import RankRequest

    req = RankRequest(scenario="passage", query="q", candidates=[{"id": "a", "text": "plain text"},
                                                                 {"id": "b", "text": "t", "features": {"rank": 2}}])
    assert build_context(req).texts == ("plain text", "t \u00b7 first-stage rank 2")
    with pytest.raises(ValueError, match="features.quality"):
        RankRequest(scenario="routing", query="q", preference="cost",
                    candidates=[{"id": "m", "text": "t", "features": {"quality": 1.5}}])
    with pytest.raises(ValueError, match="features.popularity"):
        RankRequest(scenario="passage", query="q", candidates=[{"id": "m", "text": "t",
                                                                "features": {"popularity": 3}}])


def test_a_long_arc_challenge_routing_prompt_shows_its_question_price_and_quality(shared_data):
    routing = load_with_features([str(_ingested(shared_data, "routing"))])
    inst = next(i for i in routing if i.split == "test" and "arc-challenge" in i.id and len(i.query.split()) > 300)
    prompt = iterative_prompt(build_context(inst.to_request()), list(range(len(inst.candidates)))).user
    question = inst.query.rsplit("\n\n", 1)[-1]
    assert " ".join(question.split()[:12]) in prompt
    lines = [line for line in prompt.splitlines() if line.startswith("[")]
    assert len(lines) == len(inst.candidates)
    assert all(" \u00b7 quality " in line and " per 1M queries" in line for line in lines)
    gpt4 = next(c for c in inst.candidates if c.id == "gpt-4-1106-preview").features
    assert gpt4.quality > 0.8 and gpt4.price > 5 * min(c.features.price for c in inst.candidates)


def test_a_movielens_prompt_shows_counts_and_ratings(shared_data):
    rec = load_with_features([str(_ingested(shared_data, "recommendation"))])
    inst = next(i for i in rec if i.split == "test")
    prompt = iterative_prompt(build_context(inst.to_request()), list(range(len(inst.candidates)))).user
    lines = [line for line in prompt.splitlines() if line.startswith("[")]
    assert sum(" ratings \u00b7 " in line and "/5" in line for line in lines) >= len(lines) // 2


_CACHE: dict = {}


def _ingested(shared, scenario):
    import tempfile

    from iranker.ingest import ingest

    if scenario not in _CACHE:
        out = tempfile.mkdtemp(prefix=f"iranker-{scenario}-")
        if scenario == "routing":
            ingest("routerbench", shared / "routing" / "routerbench", out, dvc=False)
        else:
            ingest("recbole", shared / "recommendation" / "ml-100k", out, {"max_users": "120"}, dvc=False)
        _CACHE[scenario] = out
    return _CACHE[scenario]

