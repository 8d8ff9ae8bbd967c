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


# ------------------------------------------------------------------------------------- a real Qwen2.5 model folder

def test_a_real_qwen25_model_ranks_the_sample_request_from_the_cli_in_fast_and_reasoning_mode():
    """`iranker rank samples/request.json --model FOLDER` with a real Qwen2.5 model (the paper's family): fast mode
    over its 24 single-token labels, reasoning mode with A..Z. Set IRANKER_QWEN_MODEL to a transformers folder
    (../shared/models/README.md says how one was built on this kind of machine; `iranker.models.convert_gguf`)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ROOT

    folder = os.environ.get("IRANKER_QWEN_MODEL")
    if not folder or not (Path(folder) / "config.json").exists():
        pytest.skip("no Qwen2.5 model folder: set IRANKER_QWEN_MODEL (see ../shared/models/README.md)")
    request = json.loads((ROOT / "samples" / "request.json").read_text())
    ids = {c["id"] for c in request["candidates"]}
    for extra in ([], ["--reasoning"]):
        out = subprocess.run([sys.executable, "-m", "iranker.cli", "rank", str(ROOT / "samples" / "request.json"),
                              "--model", folder, *extra], capture_output=True, text=True, timeout=1800, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        resp = json.loads(out.stdout)
        assert set(resp["ranking"]) <= ids and len(resp["eliminated"]) == len(ids) - 1
        if not extra:
            assert resp["parse_failures"] == 0
