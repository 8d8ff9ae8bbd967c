"""The embedded SmolLM2-135M model on real data (slow: loads the model; `make test` pulls it first)."""

from __future__ import annotations

import pytest
from conftest import dl19

from iranker.models import embedded_model_dir
from iranker.ranker import IterativeRanker, RankerConfig
from iranker.schema import RankRequest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    if not (embedded_model_dir() / "iranker-model.json").exists():
        pytest.skip("embedded model not pulled: run `iranker model pull` (make test does)")
    from iranker.backends.transformers import TransformersBackend

    return TransformersBackend()


def test_embedded_model_ranks_a_dl19_query_of_20_passages(embedded, shared_data):
    runs, _ = dl19(shared_data, depth=20)
    _, query, hits = runs[0]
    req = RankRequest(scenario="passage", query=query, candidates=[{"id": d, "text": t} for d, t, _ in hits])
    resp = IterativeRanker(embedded, RankerConfig()).rank(req)
    assert len(resp.ranking) == 20 and sorted(resp.ranking) == sorted(d for d, _, _ in hits)
    assert resp.model == "smollm2-135m" and len(resp.eliminated) == 19 and resp.parse_failures == 0
    plain = IterativeRanker(embedded, RankerConfig(speculate=0)).rank(req)
    assert plain.ranking == resp.ranking and plain.usage.llm_calls == 19 >= resp.usage.llm_calls


def test_embedded_model_layouts_agree_on_the_first_decision(embedded, shared_data):
    """Before anything is eliminated, the cached and the re-listed prompt are the same tokens."""
    from iranker.prompts import build_context, iterative_prompt

    runs, _ = dl19(shared_data, depth=20)
    _, query, hits = runs[1]
    req = RankRequest(scenario="passage", query=query, candidates=[{"id": d, "text": t} for d, t, _ in hits])
    p = iterative_prompt(build_context(req), list(range(20)))
    cached = embedded.open_pools([p]).decide([list(range(20))])[0][0][1]
    full = embedded.choose([p])[0]
    assert cached.label == full.label
    assert max(abs(cached.logprobs[k] - full.logprobs[k]) for k in p.labels) < 1e-3
