"""Thought templates: the store keeps rewarded thoughts only, retrieval finds similar queries of the same scenario,
and the one context builder renders them for ranking, cost estimates and printed prompts alike."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iranker.io import load_instances
from iranker.prompts import TEMPLATES_HEADER
from iranker.ranker import PARSE_FAILURE, RankerConfig, estimate_cost, first_prompt, rank_requests
from iranker.schema import Elimination, RankRequest, RankResponse, Usage
from iranker.thoughts import STORE_FILE, THOUGHTS_FILE, ThoughtStore, ThoughtWriter, thought_of
from iranker.train.thoughts import collect_thoughts, keep_thoughts

ROOT = Path(__file__).resolve().parent.parent


def _store(folder) -> ThoughtStore:
    with ThoughtWriter(folder, source="test") as w:
        assert w.add("passage", "what causes tides on earth", "the moon's gravity pulls the oceans", 1.0, 4)
        assert w.add("passage", "how do vaccines train the immune system", "antigens prime memory cells", 1.0, 3)
        assert w.add("passage", "tides and the moon phases", "the moon's gravity pulls the oceans", 1.0, 5)
        assert not w.add("passage", "tides", "a wrong guess", 0.5, 4)  # not rewarded
        assert not w.add("passage", "tides", None, 1.0, 4)  # no thought
        assert w.add("routing", "solve 2x + 3 = 7", "math needs a strong model", 1.0, 11)
    return ThoughtStore.load(folder)


def test_the_store_keeps_rewarded_thoughts_and_retrieves_by_scenario(tmp_path):
    store = _store(tmp_path / "s")
    assert json.loads((tmp_path / "s" / STORE_FILE).read_text()) == {"format": 1, "index": "bm25", "count": 4}
    assert len(store) == 4
    # the two tide queries come first, their identical thought once; then nothing unrelated scores above 0
    assert store.nearest("passage", "why are there tides", 3) == ["the moon's gravity pulls the oceans"]
    assert store.nearest("passage", "immune system vaccines", 1) == ["antigens prime memory cells"]
    assert store.nearest("routing", "tides", 3) == []  # another scenario's thoughts are never shown
    assert store.nearest("recommendation", "tides", 3) == []
    assert store.nearest("passage", "   ", 3) == []
    assert thought_of("<think> B is off-topic </think><answer>[B]</answer>") == "B is off-topic"
    assert thought_of("[B]") is None


def test_minilm_retrieval_ranks_by_meaning_and_always_finds_the_nearest(tmp_path):
    _store(tmp_path / "s")
    store = ThoughtStore.load(tmp_path / "s", retrieval="minilm")
    assert store.nearest("passage", "ocean high water and the lunar pull", 1) == ["the moon's gravity pulls the oceans"]
    assert store.nearest("passage", "how do vaccines train the immune system", 3)[0] == "antigens prime memory cells"
    assert len(store.nearest("passage", "stock market prices", 3)) == 2  # two distinct thoughts, nothing shared
    assert store.nearest("routing", "tides", 3) == ["math needs a strong model"]
    assert store.nearest("recommendation", "tides", 3) == []
    with pytest.raises(ValueError, match="retrieval 'tfidf' is not one of bm25, minilm"):
        ThoughtStore.load(tmp_path / "s", retrieval="tfidf")


def test_a_bad_store_is_an_error_naming_the_file_and_line(tmp_path):
    with pytest.raises(ValueError, match="thoughts.jsonl not found"):
        ThoughtStore.load(tmp_path)
    (tmp_path / THOUGHTS_FILE).write_text('{"scenario": "passage", "query": "q", "thought": "t", "reward": 1, '
                                          '"pool": 3}\n{"scenario": "passage"}\n')
    with pytest.raises(ValueError, match=r"thoughts.jsonl line 2: expected a JSON object with scenario"):
        ThoughtStore.load(tmp_path)


def test_decisions_are_scored_on_the_pool_they_were_made_in():
    inst = load_instances(ROOT / "samples" / "instances.jsonl")[0]
    ids = [c.id for c in inst.candidates][:3]
    grades = {c: inst.grade(c) for c in ids}
    assert len(set(grades.values())) > 1, "the sample's first instance should hold two grades in its first three"
    worst = min(ids, key=lambda c: (grades[c], ids.index(c)))
    best = max(ids, key=lambda c: (grades[c], -ids.index(c)))

    class Seen(list):
        def add(self, scenario, query, thought, reward, pool):
            self.append((thought, reward, pool))
            return bool(thought) and reward >= 1.0

    seen = Seen()
    response = RankResponse(ranking=[], model="m", usage=Usage(), eliminated=[
        Elimination(id=best, step=0, reasoning="the best one is worst?"),
        Elimination(id=worst, step=1, reasoning=f"{PARSE_FAILURE} (no answer); fallback: removed the last")])
    kept = keep_thoughts(seen, inst, ids, response)
    assert kept == 0
    assert seen[0] == ("the best one is worst?", 0.0, 3)  # the best of the pool removed: no reward
    assert seen[1][0] is None and seen[1][2] == 2  # a fallback carries no thought, whatever its reward


def test_templates_are_rendered_wherever_a_request_is_ranked(tmp_path, tiny_backend):
    store = _store(tmp_path / "s")
    req = RankRequest.model_validate({"scenario": "passage", "query": "why are there tides",
                                      "candidates": [{"id": "a", "text": "the moon"}, {"id": "b", "text": "cats"}]})
    plain, templated = RankerConfig(), RankerConfig(thoughts=store, templates_k=2)
    shown = first_prompt(tiny_backend, templated, req)
    assert TEMPLATES_HEADER in shown and "the moon's gravity pulls the oceans" in shown
    assert TEMPLATES_HEADER not in first_prompt(tiny_backend, plain, req)
    assert estimate_cost(tiny_backend, templated, req).tokens > estimate_cost(tiny_backend, plain, req).tokens
    ranked = rank_requests(tiny_backend, [req], templated)[0]
    assert ranked.usage.prompt_tokens > rank_requests(tiny_backend, [req], plain)[0].usage.prompt_tokens


def test_collect_writes_a_store_from_reasoning_mode_rankings(tmp_path, tiny_backend):
    instances = [i for i in load_instances(ROOT / "samples" / "instances.jsonl")
                 if len({i.grade(c.id) for c in i.candidates}) > 1][:3]
    out = collect_thoughts(tiny_backend, RankerConfig(max_new_tokens=8), instances, tmp_path / "s", pool_size=3,
                           progress=False)
    assert out["pools"] == 3 and out["decisions"] == 6  # two decisions per pool of three
    assert out["kept"] == len(ThoughtStore.load(tmp_path / "s"))


def test_cli_refuses_a_missing_store_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "iranker.cli", "rank", str(ROOT / "samples" / "request.json"),
                           "--thought-templates", str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        (f"iranker: error: --thought-templates: {tmp_path / 'nothing' / THOUGHTS_FILE} not found (a thought store "
         "folder holds thoughts.jsonl and store.json; `iranker thoughts collect` or a reasoning-mode training run "
         "writes one)")]


def test_open_think_starts_the_assistant_turn_inside_the_thought(tiny_backend):
    req = RankRequest.model_validate({"scenario": "passage", "query": "tides", "options": {"reasoning": True},
                                      "candidates": [{"id": "a", "text": "the moon"}, {"id": "b", "text": "cats"}]})
    assert first_prompt(tiny_backend, RankerConfig(open_think=True), req).endswith("<think>")
    assert not first_prompt(tiny_backend, RankerConfig(), req).endswith("<think>")


def test_a_model_saved_with_templates_k_is_shown_its_own_store_wherever_it_is_opened(tmp_path, tiny_model_dir):
    """Train/serve parity for the templates: `ranking.templates_k` in the saved settings makes `open_model` (rank,
    evaluate, the gate, serve) show the model its own thoughts/ store; an explicit 0 turns it off; a model that
    claims templates but ships no store is an error that says what to do."""
    import shutil

    from iranker.ranker import open_model
    from iranker.settings import RankingSettings, write_settings
    from iranker.train.config import TrainConfig

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_settings(model, RankingSettings(templates_k=2))
    with pytest.raises(ValueError, match="thought templates: .*no thoughts/ folder.*--templates-k 0"):
        open_model(str(model))
    _store(model / "thoughts")
    _, config = open_model(str(model))
    assert config.templates_k == 2 and len(config.thoughts) == 4
    assert config.thoughts.path == str(model / "thoughts")
    warned = []
    _, config = open_model(str(model), templates_k=0, warn=warned.append)
    assert config.thoughts is None and warned and "templates_k=0 differs" in warned[0]
    _store(tmp_path / "other")
    _, config = open_model(str(model), thoughts=str(tmp_path / "other"))  # a store given: it, the saved K
    assert config.thoughts.path == str(tmp_path / "other") and config.templates_k == 2
    _, config = open_model(str(tiny_model_dir), thoughts=str(tmp_path / "other"))  # no saved setting: 3
    assert config.templates_k == 3
    # the store is what reasoning-mode training keeps: a fast-mode profile cannot ask for it
    with pytest.raises(ValueError, match="ranking.templates_k: .*reasoning"):
        TrainConfig.model_validate({"data": ["samples"], "ranking": {"templates_k": 2}})
    assert TrainConfig.model_validate({"data": ["samples"], "mode": "reasoning", "algo": "ppo",
                                       "ranking": {"templates_k": 2}}).ranking.templates_k == 2
