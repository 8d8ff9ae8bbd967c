"""The OpenAI-compatible backend against a local stand-in server; the vLLM backend's requests without vLLM."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from iranker.backends.openai import OpenAIBackend
from iranker.prompts import build_context, iterative_prompt
from iranker.ranker import IterativeRanker, RankerConfig
from iranker.schema import RankRequest


def _request(n=6):
    return RankRequest(scenario="passage", query="vaccines",
                       candidates=[{"id": f"d{i}", "text": f"passage {i} about the immune system"} for i in range(n)])


class StandIn:
    """A small server speaking the OpenAI completions API, backed by the tiny model (greedy, top logprobs)."""

    def __init__(self, model, tokenizer, fail_with: int | None = None):
        self.model, self.tokenizer, self.fail_with, self.bodies = model, tokenizer, fail_with, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if outer.fail_with:
                    self.send_response(outer.fail_with)
                    self.end_headers()
                    self.wfile.write(b'{"error": "overloaded"}')
                    return
                data = json.dumps(outer.complete(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @torch.inference_mode()
    def complete(self, body):
        ids = self.tokenizer.encode(body["prompt"], add_special_tokens=False)
        x = torch.tensor([ids])
        out, new = [], []
        for _ in range(body.get("max_tokens", 16)):
            logits = self.model(input_ids=x).logits[0, -1].log_softmax(-1)
            tok = int(logits.argmax())
            if not new and body.get("logprobs"):
                top = logits.topk(body["logprobs"])
                out.append({self.tokenizer.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices)})
            new.append(tok)
            x = torch.cat([x, torch.tensor([[tok]])], dim=1)
        choice = {"index": 0, "text": self.tokenizer.decode(new), "finish_reason": "length"}
        if body.get("logprobs"):
            choice["logprobs"] = {"top_logprobs": out}
        return {"choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new)}}

    def close(self):
        self.server.shutdown()


@pytest.fixture()
def standin(tiny_backend):
    s = StandIn(tiny_backend.model, tiny_backend.tokenizer)
    yield s
    s.close()


def test_fast_choices_match_the_in_process_backend(standin, tiny_backend, tiny_model_dir):
    remote = OpenAIBackend(standin.url, "tiny", tokenizer=str(tiny_model_dir), top_logprobs=len(tiny_backend.tokenizer),
                           api_key="secret")
    prompts = [iterative_prompt(build_context(_request(n)), list(range(n))) for n in (3, 6)]
    local = tiny_backend.choose(prompts)
    got = remote.choose(prompts)
    assert [c.label for c in got] == [c.label for c in local]
    body = standin.bodies[0]
    assert body["path"] == "/v1/completions" and body["auth"] == "Bearer secret"
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0 and body["prompt"].endswith("assistant\n[")
    assert got[0].prompt_tokens > 0


def test_ranking_over_http_is_a_permutation_and_counts_misses(standin):
    # with only 2 top tokens, the pool's labels are usually not among them: each miss is a counted failure
    remote = OpenAIBackend(standin.url, "tiny", top_logprobs=2)
    resp = IterativeRanker(remote, RankerConfig(layout="cached")).rank(_request(5))  # no open_pools: re-lists
    assert sorted(resp.ranking) == [f"d{i}" for i in range(5)]
    assert resp.usage.llm_calls == 4
    misses = sum(1 for e in resp.eliminated if e.reasoning and "no valid choice" in e.reasoning)
    assert resp.parse_failures == misses


def test_allowed_token_ids_are_sent_when_asked(standin, tiny_model_dir, tiny_backend):
    remote = OpenAIBackend(standin.url, "tiny", tokenizer=str(tiny_model_dir), allowed_token_ids=True)
    p = iterative_prompt(build_context(_request(3)), [0, 1, 2])
    body = remote.completion_request(p, 1, 0.0, fast=True)
    assert body["allowed_token_ids"] == [tiny_backend.encoder.label_ids[x] for x in "ABC"]


def test_reasoning_generation_over_http(standin):
    remote = OpenAIBackend(standin.url, "tiny")
    resp = IterativeRanker(remote, RankerConfig(reasoning=True, max_new_tokens=4)).rank(_request(3))
    assert resp.parse_failures == 2 and resp.usage.completion_tokens == 8
    assert standin.bodies[0]["prompt"].startswith("System: ")  # no tokenizer: plain rendering


def test_server_errors_are_raised_with_the_status(tiny_backend):
    s = StandIn(tiny_backend.model, tiny_backend.tokenizer, fail_with=503)
    try:
        with pytest.raises(RuntimeError, match="503"):
            OpenAIBackend(s.url, "tiny").choose([iterative_prompt(build_context(_request(2)), [0, 1])])
    finally:
        s.close()


def test_vllm_backend_needs_vllm_and_builds_restricted_requests(tiny_tokenizer):
    from iranker.backends import load_backend
    from iranker.backends.tokens import PromptEncoder
    from iranker.backends.vllm import VLLMBackend

    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"iranker\[vllm\]"):
            load_backend("vllm", "some/model")
    enc = PromptEncoder(tiny_tokenizer)
    p = iterative_prompt(build_context(_request(4)), [0, 1, 2, 3])
    params = VLLMBackend.fast_params(enc, p)
    assert params["max_tokens"] == 1 and params["temperature"] == 0.0
    assert params["allowed_token_ids"] == [enc.label_ids[x] for x in "ABCD"]
    assert VLLMBackend.token_prompt(enc, p)["prompt_token_ids"] == enc.encode(p).ids


def test_unknown_backend_and_missing_url_are_clear_errors():
    from iranker.backends import load_backend

    with pytest.raises(ValueError, match="backend: expected one of"):
        load_backend("onnx")
    with pytest.raises(ValueError, match="base_url"):
        load_backend("openai", "m")
