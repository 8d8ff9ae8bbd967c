"""The inference log: `iranker serve --log-url` posts every call as a CloudEvent pair in KServe's logger format to a
real `iranker collect` on loopback, which keeps each exactly once - also across a collector killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import free_port
from test_serving import PASSAGE, V1, Server

from serving.collector import Store, make_app, parse_event, read_events
from serving.eventlog import REQUEST_TYPE, RESPONSE_TYPE, Origin, event_headers, request_id


class Collector:
    def __init__(self, out, port=None, env=None, *args):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "iranker.cli", "collect", "--out", str(out), "--port",
                                      str(self.port), "--host", "127.0.0.1", *args], env={**os.environ, **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(120):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.25)
        raise RuntimeError(f"collector did not start: {self.proc.stderr.read().decode()[-2000:]}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _pairs(root):
    events = list(read_events(root))
    keys = [(e["id"], e["type"]) for e in events]  # every call here has its own request id
    assert len(keys) == len(set(keys)), "an event stored twice"
    return {e["id"]: e for e in events if e["type"] == REQUEST_TYPE}, \
        {e["id"]: e for e in events if e["type"] == RESPONSE_TYPE}


def _wait_for(cond, timeout=90.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow  # real servers
def test_every_call_is_logged_once_in_kserves_format_and_survives_a_dead_collector(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    collector = Collector(store)
    server = Server("--model", str(tiny_model_dir), "--no-features", "--log-url", collector.url,
                    "--log-spool", str(tmp_path / "spool"))
    try:
        # the id: a client's is kept, else one is made; the answer carries it in the header and the body
        r = server.post(V1, {"instances": [PASSAGE]}, headers={"x-request-id": "client-id-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1" and r.json()["id"] == "client-id-1"
        r2 = server.post("/v1/rerank", {"query": "vaccines", "documents": ["a vaccine", "a car", "the sun"]})
        rid2 = r2.headers["x-request-id"]
        assert r2.status_code == 200 and len(rid2) == 32 and r2.json()["id"] == rid2
        assert _wait_for(lambda: len(_pairs(store)[1]) == 2)
        requests, responses = _pairs(store)
        assert set(requests) == set(responses) == {"client-id-1", rid2}
        req, resp = requests["client-id-1"], responses["client-id-1"]
        assert req["data"] == {"instances": [PASSAGE]} and resp["data"] == r.json()
        assert req["attributes"].pop("eventid") != resp["attributes"].pop("eventid")
        assert req["attributes"] == {"inferenceservicename": "iranker", "namespace": "default",
                                     "component": "predictor", "endpoint": "default"}
        assert req["content_type"].startswith("application/json") and req["source"].startswith("http://")
        # the collector dies: rankings go on, undelayed and unharmed; their events wait in the spool
        collector.kill()
        ids = []
        for k in range(3):
            r = server.post(V1, {"instances": [PASSAGE]}, headers={"x-request-id": f"while-down-{k}"})
            assert r.status_code == 200
            ids.append(f"while-down-{k}")
        metrics = lambda: httpx.get(f"{server.url}/metrics").text
        assert _wait_for(lambda: 'iranker_log_events_total{outcome="spooled"} 6.0' in metrics()), \
            [line for line in metrics().splitlines() if "log_events" in line]
        assert len(list((tmp_path / "spool").glob("*.json"))) == 6
        # back up (same store): the spool is sent again; nothing lost, nothing twice
        collector = Collector(store, port=collector.port)
        assert _wait_for(lambda: set(ids) <= set(_pairs(store)[1]))
        requests, responses = _pairs(store)
        assert set(requests) == set(responses) == {"client-id-1", rid2, *ids}
        # the collector stores an event before the server has its 201 and removes the spooled file: wait for it
        assert _wait_for(lambda: not list((tmp_path / "spool").glob("*.json")))
        assert _wait_for(lambda: 'iranker_log_events_total{outcome="resent"} 6.0' in metrics())
    finally:
        server.close()
        collector.kill()


@pytest.mark.slow  # real servers
def test_events_not_yet_delivered_at_shutdown_are_spooled_and_sent_after_the_restart(tiny_model_dir, tmp_path):
    import socket

    hung = socket.socket()  # a sink that takes the connection and never answers: events wait in the queue
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    spool = tmp_path / "spool"
    server = Server("--model", str(tiny_model_dir), "--no-features", "--log-url",
                    f"http://127.0.0.1:{hung.getsockname()[1]}/", "--log-spool", str(spool))
    try:
        for k in range(3):
            assert server.post(V1, {"instances": [PASSAGE]}, headers={"x-request-id": f"late-{k}"}).status_code == 200
    finally:
        server.close()  # SIGTERM while the sender waits on the sink
        hung.close()
    assert len(list(spool.glob("*.json"))) == 6  # 3 calls, each a request and a response: none lost
    collector = Collector(tmp_path / "store")
    server = Server("--model", str(tiny_model_dir), "--no-features", "--log-url", collector.url, "--log-spool",
                    str(spool))
    try:  # the restarted server sends the spool at once, before any call
        assert _wait_for(lambda: set(_pairs(tmp_path / "store")[1]) == {"late-0", "late-1", "late-2"})
        assert server.post(V1, {"instances": [PASSAGE]}, headers={"x-request-id": "after"}).status_code == 200
        assert _wait_for(lambda: set(_pairs(tmp_path / "store")[1]) == {"late-0", "late-1", "late-2", "after"})
    finally:
        server.close()
        collector.kill()


def test_the_collector_keeps_an_event_once_and_refuses_what_is_not_one(tmp_path):
    from starlette.testclient import TestClient

    store = Store(tmp_path)
    client = TestClient(make_app(store, token="s3cret"))
    auth = {"Authorization": "Bearer s3cret"}
    headers = {**event_headers("r1", "request", Origin(),
                               "application/json"), **auth}
    first = client.post("/", content=b'{"instances": []}', headers=headers)
    again = client.post("/", content=b'{"instances": []}', headers=headers)
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["stored"] is False
    assert client.post("/", content=b"{}", headers={k: v for k, v in headers.items() if k != "Authorization"}
                       ).status_code == 401
    bad = client.post("/", content=b"{}", headers={"content-type": "application/json", **auth})
    assert bad.status_code == 400 and "CloudEvent" in bad.json()["error"]
    big = client.post("/", content=b"x" * (9 << 20), headers=headers)
    assert big.status_code == 413
    assert [e["id"] for e in read_events(tmp_path)] == ["r1"]
    # a crash in the middle of a write leaves a partial line: never acknowledged, removed at the next start
    path = next((tmp_path / "events").glob("date=*/events.jsonl"))
    with path.open("ab") as f:
        f.write(b'{"id": "half')
    assert [e["id"] for e in read_events(tmp_path)] == ["r1"]
    assert len(Store(tmp_path).known) == 1 and path.read_bytes().endswith(b"\n")
    # a client that sends the same x-request-id twice: two calls, two events (each has its own eventid)
    retry = {**event_headers("r1", "request", Origin(), "application/json"), **auth}
    assert client.post("/", content=b'{"instances": [1]}', headers=retry).status_code == 201
    assert [e["id"] for e in read_events(tmp_path)] == ["r1", "r1"]
    # structured mode (application/cloudevents+json) is read too
    ev = parse_event({"content-type": "application/cloudevents+json"},
                     b'{"specversion": "1.0", "id": "s1", "type": "t", "source": "x", "data": {"a": 1}}')
    assert ev["data"] == {"a": 1} and ev["id"] == "s1"


def test_request_ids_are_kept_only_when_plausible():
    assert request_id("abc-123") == "abc-123"
    for bad in (None, "", "has space", "x" * 201, "caf\u00e9"):
        assert len(request_id(bad)) == 32
