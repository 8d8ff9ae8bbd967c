"""The service's client-facing APIs and its protections, with the clients users call them through: the Cohere SDK
against /v2/rerank, the OpenAI SDK against the router (two loopback stand-in LLMs, a fallback, streaming), the
server policy and budget, isolation of a failing or late request, and limits that hold for chunked bodies."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import ROOT

from iranker.schema import RankRequest, RankResponse, Usage

TOKEN = "s3cret-token"
DOCS = ["Vaccines train the immune system to recognise a pathogen.",
        "The stock market closed higher on Friday.",
        "mRNA vaccines carry instructions for making a spike protein.",
        "A recipe for banana bread.",
        "Antibodies produced after vaccination neutralise viruses."]


class ChatStandIn:
    """An OpenAI-compatible chat LLM on loopback that answers "I am NAME" (whole or streamed), or fails with
    `fail_with` while that is set."""

    def __init__(self, name: str):
        self.name, self.fail_with, self.bodies = name, None, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body: bytes, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if outer.fail_with:
                    self._send(outer.fail_with, b'{"error": {"message": "overloaded"}}')
                    return
                text = f"I am {outer.name}"
                if not body.get("stream"):
                    self._send(200, json.dumps({
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode())
                    return
                events = b""
                for word in text.split(" "):
                    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                             "model": body["model"], "choices": [{"index": 0, "delta": {"content": word + " "},
                                                                  "finish_reason": None}]}
                    events += b"data: " + json.dumps(chunk).encode() + b"\n\n"
                events += b"data: [DONE]\n\n"
                self._send(200, events, "text/event-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def llms():
    out = {n: ChatStandIn(n) for n in ("alpha", "beta")}
    yield out
    for s in out.values():
        s.close()


@pytest.fixture(scope="module")
def api(tiny_model_dir, llms, tmp_path_factory):
    from test_serving import Server

    routes = tmp_path_factory.mktemp("routes") / "routes.yaml"
    routes.write_text(json.dumps({
        "router": "iranker-router", "default_preference": "balance", "timeout_s": 10,
        "routes": [
            {"name": "alpha", "description": "a small fast model for short factual answers",
             "cost_per_million_tokens": 0.2, "base_url": llms["alpha"].url, "api_key_env": "ALPHA_KEY"},
            {"name": "beta", "description": "a large model for hard reasoning and code",
             "cost_per_million_tokens": 15, "base_url": llms["beta"].url, "model": "beta-large"}]}))
    s = Server("--model", str(tiny_model_dir), "--no-features", "--routes", str(routes), "--allow-method", "direct",
               "--max-passes", "30", "--max-body-bytes", "200000", "--token-env", "TEST_TOKEN",
               env={"TEST_TOKEN": TOKEN, "ALPHA_KEY": "alpha-key"})
    yield s
    s.close()


pytestmark = pytest.mark.slow  # a real server (~15 s to start)


def _auth():
    return {"Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------------------------------- rerank

def test_rerank_through_the_cohere_sdk_matches_the_models_passage_ranking(api):
    import cohere

    co = cohere.ClientV2(api_key=TOKEN, base_url=api.url)
    got = co.rerank(model="iranker", query="how do vaccines work", documents=DOCS, top_n=3)
    assert [r.index for r in got.results] != [] and len(got.results) == 3
    scores = [r.relevance_score for r in got.results]
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0 and scores[1] == pytest.approx(0.8)
    # the same ranking as the model's passage ranking of the same documents
    req = {"scenario": "passage", "query": "how do vaccines work",
           "candidates": [{"id": str(i), "text": t} for i, t in enumerate(DOCS)]}
    v1 = api.post("/v1/models/iranker:predict", {"instances": [req]}, headers=_auth()).json()["predictions"][0]
    assert [str(r.index) for r in got.results] == v1["ranking"][:3]


def test_rerank_routes_and_shapes(api):
    body = {"model": "iranker", "query": "vaccines", "documents": [{"text": d} for d in DOCS],
            "return_documents": True}
    for path in ("/v1/rerank", "/openai/v1/rerank"):
        r = api.post(path, body, headers=_auth())
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "iranker" and out["id"] == r.headers["x-request-id"]  # the request id, to report on
        assert sorted(x["index"] for x in out["results"]) == list(range(len(DOCS)))
        assert all(x["document"]["text"] == DOCS[x["index"]] for x in out["results"])
        assert [x["relevance_score"] for x in out["results"]] == [1.0, 0.8, 0.6, 0.4, 0.2]
        assert out["usage"]["total_tokens"] > 0
    r = api.post("/v1/rerank", {"query": "q", "documents": []}, headers=_auth())
    assert r.status_code == 400 and "documents" in r.json()["error"]


# ------------------------------------------------------------------------------------------------- router

def _openai(api):
    import openai

    return openai.OpenAI(api_key=TOKEN, base_url=f"{api.url}/openai/v1", max_retries=0, timeout=60)


def test_router_answers_through_the_openai_sdk_and_falls_back_on_a_5xx(api, llms):
    client = _openai(api)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a sorting function"}]
    raw = client.chat.completions.with_raw_response.create(model="iranker-router", messages=msgs,
                                                           extra_body={"preference": "performance", "task": "mbpp"})
    first = raw.headers["x-iranker-route"]
    ranking = raw.headers["x-iranker-route-ranking"].split(",")
    assert ranking[0] == first and sorted(ranking) == ["alpha", "beta"]
    assert raw.parse().choices[0].message.content == f"I am {first}"  # the LLM's answer as it gave it
    sent = llms[first].bodies[-1]
    assert sent["messages"] == msgs and "preference" not in sent and "task" not in sent
    assert sent["model"] == {"alpha": "alpha", "beta": "beta-large"}[first]
    assert sent["auth"] == ("Bearer alpha-key" if first == "alpha" else None)
    # the first LLM fails: the same request goes to the next one in the ranking
    llms[first].fail_with = 503
    try:
        raw = client.chat.completions.with_raw_response.create(model="iranker-router", messages=msgs,
                                                               extra_body={"preference": "performance"})
        assert raw.headers["x-iranker-route"] == ranking[1] and raw.headers["x-iranker-route-fallbacks"] == "1"
        assert raw.parse().choices[0].message.content == f"I am {ranking[1]}"
        llms[ranking[1]].fail_with = 500  # every LLM fails: 502, naming the attempts
        import openai

        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="iranker-router", messages=msgs)
        assert e.value.status_code == 502 and "HTTP 503" in e.value.message and "HTTP 500" in e.value.message
    finally:
        for s in llms.values():
            s.fail_with = None
    metrics = httpx.get(f"{api.url}/metrics").text
    assert f'iranker_routes_total{{preference="performance",route="{ranking[1]}"}}' in metrics
    assert "iranker_route_fallbacks_total" in metrics


def test_router_streams_the_llms_answer_through(api):
    client = _openai(api)
    stream = client.chat.completions.create(model="iranker-router", stream=True,
                                            messages=[{"role": "user", "content": "hello there"}],
                                            extra_headers={"x-iranker-preference": "cost"})
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text.strip() in ("I am alpha", "I am beta")


def test_router_refuses_what_it_cannot_route(api):
    import openai

    client = _openai(api)
    with pytest.raises(openai.BadRequestError, match="routes chat completions for model 'iranker-router'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="preference"):
        client.chat.completions.create(model="iranker-router", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-iranker-preference": "cheapest"})
    with pytest.raises(openai.BadRequestError, match="task"):
        client.chat.completions.create(model="iranker-router", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-iranker-task": "t" * 101})
    with pytest.raises(openai.BadRequestError, match="needs a user message"):
        client.chat.completions.create(model="iranker-router", messages=[{"role": "system", "content": "x"}])
    models = [m.id for m in client.models.list()]
    assert models == ["iranker", "iranker-router"]


# ------------------------------------------------------------------------------------ policy and isolation

def _passage(n, **extra):
    return {"scenario": "passage", "query": "vaccines",
            "candidates": [{"id": f"d{i}", "text": f"passage {i} on vaccines"} for i in range(n)], **extra}


@pytest.mark.parametrize("request_, field, limit", [
    (_passage(4, options={"reasoning": True}), "instances[0].options.reasoning", "--allow-reasoning"),
    (_passage(30, options={"method": "direct"}), "instances[0].candidates", "at most 26"),
    (_passage(40), "instances[0]", "at most 30 per request (--max-passes)"),
])
def test_the_policy_refuses_with_the_option_and_the_limit(api, request_, field, limit):
    r = api.post("/v1/models/iranker:predict", {"instances": [request_]}, headers=_auth())
    assert r.status_code == 400, r.text
    assert field in r.json()["error"] and limit in r.json()["error"]


def test_a_bad_request_fails_alone_while_its_batch_mates_are_answered(api):
    async def main():
        async with httpx.AsyncClient(base_url=api.url, headers=_auth(), timeout=60) as c:
            bodies = [_passage(5), _passage(30, options={"method": "direct"}), _passage(6),
                      _passage(4, options={"method": "direct"})]
            return await asyncio.gather(*(c.post("/v1/models/iranker:predict", json={"instances": [b]})
                                          for b in bodies))

    codes = [r.status_code for r in asyncio.run(main())]
    assert codes == [200, 400, 200, 200]


# --------------------------------------------------------------------------------------------------- limits

def test_the_body_limit_holds_for_chunked_bodies(api):
    def chunks():
        yield b'{"instances": ['
        for _ in range(50):
            yield b" " * 10_000  # 500 kB in all, no Content-Length
        yield b"]}"

    r = httpx.post(f"{api.url}/v1/models/iranker:predict", content=chunks(), timeout=30,
                   headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == 413 and "body: at most 200000 bytes" in r.json()["error"]
    assert api.post("/v1/rerank", {"query": "q", "documents": DOCS}, headers=_auth()).status_code == 200


def test_the_token_is_checked_before_the_body_is_read(api):
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(b"POST /v1/models/iranker:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer wrong\r\nContent-Length: 1000\r\n\r\n")  # and no body at all
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 401")
    assert httpx.get(f"{api.url}/v2/health/ready").status_code == 200  # health stays open


# ---------------------------------------------------------------------------------------- the batcher, alone

def _reqs(n):
    return [RankRequest.model_validate(_passage(3, query=f"q{i}")) for i in range(n)]


def _answer(reqs):
    return [RankResponse(ranking=[c.id for c in r.candidates], eliminated=[], model="echo", usage=Usage())
            for r in reqs]


def test_a_failing_request_fails_alone_in_the_batcher():
    sys.path.insert(0, str(ROOT))
    from kserve.errors import InvalidInput

    from serving.batching import Batcher
    from serving.policy import ServeConfig

    calls = []

    def rank(reqs, alive):
        calls.append([r.query for r in reqs])
        if any(r.query == "q1" for r in reqs):
            raise ValueError("candidates: cannot rank this one")
        return _answer(reqs)

    async def main():
        b = Batcher(rank, ServeConfig(max_batch=8, max_wait_ms=50))
        return await asyncio.gather(*(b.submit([r]) for r in _reqs(3)), return_exceptions=True)

    out = asyncio.run(main())
    assert isinstance(out[1], InvalidInput) and "cannot rank this one" in str(out[1])
    assert out[0][0].ranking == ["d0", "d1", "d2"] and out[2][0].ranking == ["d0", "d1", "d2"]
    assert calls[0] == ["q0", "q1", "q2"] and sorted(map(tuple, calls[1:])) == [("q0",), ("q1",), ("q2",)]


def test_a_late_request_is_dropped_between_elimination_steps(tiny_backend):
    """The ranker asks each request's `alive()` between steps: one that turns False stops being ranked while its
    batch-mate is ranked to the end; the batcher's `alive()` turns False at the deadline."""
    sys.path.insert(0, str(ROOT))
    from iranker.ranker import RankerConfig, rank_requests
    from serving.batching import Batcher
    from serving.policy import DeadlineExceeded, ServeConfig

    reqs = [RankRequest.model_validate(_passage(8, query=f"q{i}")) for i in range(2)]
    asked = {"n": 0}

    def late():
        asked["n"] += 1
        return asked["n"] <= 2  # alive for two checks, then past its deadline

    for layout in ("cached", "relist"):
        asked["n"] = 0
        out = rank_requests(tiny_backend, reqs, RankerConfig(layout=layout, speculate=0), alive=[late, lambda: True])
        assert len(out[1].eliminated) == 7 and 1 <= len(out[0].eliminated) < 7, layout

    seen = {}

    def rank(batch, alive):
        time.sleep(0.3)
        seen["alive"] = [a() for a in alive]
        return _answer(batch)

    async def main():
        b = Batcher(rank, ServeConfig(max_wait_ms=20))
        return await asyncio.gather(b.submit(_reqs(1), deadline_s=0.1), b.submit(_reqs(1), deadline_s=5),
                                    return_exceptions=True)

    out = asyncio.run(main())
    assert isinstance(out[0], DeadlineExceeded) and out[1][0].ranking == ["d0", "d1", "d2"]
    assert seen["alive"] == [False, True]


def test_a_bad_routes_file_is_refused_naming_the_file_and_the_field(tmp_path, tiny_model_dir):
    import subprocess

    bad = tmp_path / "routes.yaml"
    bad.write_text("routes:\n  - {name: a, description: x, cost_per_million_tokens: -1, base_url: http://a/v1}\n")
    r = subprocess.run([sys.executable, "-m", "iranker.cli", "serve", "--model", str(tiny_model_dir), "--no-features",
                        "--routes", str(bad)], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert str(bad) in r.stderr and "routes.0.cost_per_million_tokens" in r.stderr
