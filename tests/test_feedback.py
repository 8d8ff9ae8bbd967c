"""The loop back from serving: calls logged by a real `iranker serve --log-url` into a real `iranker collect`, outcomes
through POST /v1/feedback (and the router's own, with a fallback), a collector SIGKILLed and restarted in between,
then `iranker data ingest feedback` turns the store into validated ranking instances of all three scenarios."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pandas as pd
import pytest
from conftest import ROOT
from test_eventlog import Collector, _wait_for
from test_serving import PASSAGE, V1, Server, feature_repo  # noqa: F401 - the Feast repository fixture
from test_serving_api import ChatStandIn

from iranker.data import build
from iranker.data.feedback import FEEDBACK_TYPE, ROUTE_OUTCOME_TYPE, read_events
from iranker.validation import validate_built


@pytest.mark.slow  # real servers
def test_served_calls_and_their_outcomes_become_validated_instances(tiny_model_dir, feature_repo, tmp_path):  # noqa: F811
    from iranker.features import UserFeatures

    repo, user = feature_repo
    rec = {"scenario": "recommendation", "user_id": user["user_id"], "candidates": user["candidates"][:4]}
    titles = {c["id"]: c["text"] for c in rec["candidates"]}
    store = tmp_path / "store"
    llms = {n: ChatStandIn(n) for n in ("alpha", "beta")}
    routes = tmp_path / "routes.yaml"
    routes.write_text(json.dumps({"router": "iranker-router", "timeout_s": 10, "routes": [
        {"name": n, "description": f"the {n} model", "cost_per_million_tokens": c, "base_url": llms[n].url}
        for n, c in (("alpha", 0.2), ("beta", 15))]}))
    collector = Collector(store)
    server = Server("--model", str(tiny_model_dir), "--feature-repo", str(repo), "--routes", str(routes),
                    "--log-url", collector.url, "--log-spool", str(tmp_path / "spool"))
    try:
        # the calls: a v1 call of two rankings, a rerank, a routed chat whose first LLM fails
        r = server.post(V1, {"instances": [rec, PASSAGE]}, headers={"x-request-id": "v1-call"})
        assert r.status_code == 200
        rec_ranking = r.json()["predictions"][0]["ranking"]
        rr = server.post("/v1/rerank", {"query": "vaccines", "documents": ["a vaccine", "a car", "the sun"]})
        rerank_id = rr.json()["id"]
        first = server.post("/openai/v1/chat/completions", {"model": "iranker-router", "messages": [
            {"role": "user", "content": "what is 2+2"}]}).headers["x-iranker-route"]
        llms[first].fail_with = 503
        chat = server.post("/openai/v1/chat/completions", {"model": "iranker-router", "messages": [
            {"role": "user", "content": "what is 3+3"}]})
        llms[first].fail_with = None
        chat_id, answered = chat.headers["x-request-id"], chat.headers["x-iranker-route"]
        assert chat.status_code == 200 and answered != first and chat.headers["x-iranker-route-fallbacks"] == "1"

        # bad feedback: a 4xx naming the field, nothing logged
        for body, status, words in [
            ({"request_id": "nobody", "chosen": ["m1"]}, 404, "request_id"),
            ({"request_id": "v1-call", "chosen": ["m9"]}, 400, "chosen[0]"),
            ({"request_id": "v1-call", "instance": 2, "chosen": [rec_ranking[0]]}, 400, "instance"),
            ({"request_id": "v1-call", "grades": {rec_ranking[0]: -1}}, 400, "grades"),
            ({"request_id": "v1-call", "verdict": "good"}, 400, "verdict"),
            ({"request_id": "v1-call"}, 400, "chosen"),
            ({"request_id": "v1-call", "chosen": [rec_ranking[0]], "extra": 1}, 400, "extra"),
            ('{"request_id": "v1-call", "chosen": [', 400, "body"),
        ]:
            got = server.post("/v1/feedback", body)
            assert got.status_code == status and words in got.json()["error"], (body, got.text)

        # outcomes; the collector is killed between them: the spool keeps them, nothing is lost or doubled
        chosen = rec_ranking[-1]
        got = server.post("/v1/feedback", {"request_id": "v1-call", "chosen": [chosen]})
        assert got.status_code == 202 and got.json()["history_updated"] is True
        # the user's next request reads a history that ends with the item, without a re-materialization
        assert UserFeatures(repo).history(user["user_id"])[-1] == titles[chosen]
        assert _wait_for(lambda: any(e["type"] == FEEDBACK_TYPE for e in read_events(store)))
        collector.kill()
        assert server.post("/v1/feedback", {"request_id": rerank_id, "grades": {"0": 3, "1": 0, "2": 1}}
                           ).status_code == 202
        assert server.post("/v1/feedback", {"request_id": "v1-call", "instance": 1,
                                            "grades": {"d0": 2, "d3": 0}}).status_code == 202
        assert server.post("/v1/feedback", {"request_id": chat_id, "verdict": "good"}).status_code == 202
        collector = Collector(store, port=collector.port)
        assert _wait_for(lambda: sum(e["type"] == FEEDBACK_TYPE for e in read_events(store)) == 4)
        assert _wait_for(lambda: sum(e["type"] == ROUTE_OUTCOME_TYPE for e in read_events(store)) == 2)
        assert 'iranker_feedback_total{call="v1"} 2.0' in httpx.get(f"{server.url}/metrics").text
    finally:
        server.close()
        collector.kill()
        for s in llms.values():
            s.close()

    events = list(read_events(store))
    assert len({e["attributes"]["eventid"] for e in events}) == len(events) == 4 * 2 + 2 + 4  # 4 calls, 2 outcomes
    outcome = next(e["data"] for e in events if e["type"] == ROUTE_OUTCOME_TYPE and e["id"] == chat_id)
    assert outcome["route"] == answered and outcome["failed"] == [first] and outcome["status"] == 200
    assert outcome["usage"]["total_tokens"] == 8 and outcome["cost_usd"] == pytest.approx(8 * (
        0.2 if answered == "alpha" else 15) / 1e6)

    # the store becomes instances, validated and versioned like every dataset
    out = tmp_path / "feedback-data"
    r = subprocess.run([sys.executable, "-m", "iranker.cli", "data", "ingest", "feedback", str(store), "--out",
                        str(out), "--no-dvc"], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {i["id"].rsplit("-", 1)[0].removeprefix("feedback-") + f"#{i['id'].rsplit('-', 1)[1]}": i
            for i in map(json.loads, (out / "instances.jsonl").read_text().splitlines())}
    assert set(rows) == {"v1-call#0", "v1-call#1", f"{rerank_id}#0", f"{chat_id}#0"}
    got = rows["v1-call#0"]
    assert got["scenario"] == "recommendation" and got["relevance"] == {chosen: 1.0}
    assert got["user_id"] == user["user_id"]
    assert [c["id"] for c in got["candidates"]] == rec_ranking  # every shown candidate, in the order shown
    assert rows["v1-call#1"]["relevance"] == {"d0": 2.0} and len(rows["v1-call#1"]["candidates"]) == 2
    assert rows[f"{rerank_id}#0"]["relevance"] == {"0": 3.0, "2": 1.0}
    route = rows[f"{chat_id}#0"]
    assert route["scenario"] == "routing" and route["relevance"] == {answered: 1.0}
    assert sorted(c["id"] for c in route["candidates"]) == ["alpha", "beta"] and route["query"] == "what is 3+3"
    # the held-out slice is the latest: the last query first seen (20 % of the 5 users and queries) is the test split
    assert route["split"] == "test" and {r["split"] for k, r in rows.items() if r is not route} <= {"train",
                                                                                                   "validation"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "feedback" and manifest["counts"]["instances"] == 4
    assert manifest["counts"]["skipped"] == {"rankings without an outcome": 1}  # the first routed call
    assert "FAILED" not in (out / "validation.md").read_text()


def _adder(root):
    """Store events in a collector folder as `iranker collect` does (serving.collector.Store)."""
    from serving.collector import Store

    store = Store(root)

    def add(rid, type_, data, time, eventid):
        store.add({"id": rid, "type": type_, "source": "http://s/", "time": time, "received": time,
                   "attributes": {"eventid": eventid}, "content_type": "application/json", "data": data})
    return add


def write_feedback_store(root, n: int = 10) -> None:
    """A collector folder of `n` passage rankings (v1 calls), each with graded feedback, one minute apart."""
    add = _adder(root)
    for k in range(n):
        req = {**PASSAGE, "query": f"{PASSAGE['query']} (question {k})"}
        ranking = [c["id"] for c in req["candidates"]][::-1]
        t = f"2026-01-01T10:{k:02d}:00+00:00"
        add(f"call-{k}", "org.kubeflow.serving.inference.request", {"instances": [req]}, t, f"q{k}")
        add(f"call-{k}", "org.kubeflow.serving.inference.response", {"predictions": [{"ranking": ranking}]}, t,
            f"r{k}")
        add(f"call-{k}", FEEDBACK_TYPE, {"instance": 0, "grades": {ranking[0]: 0, ranking[-1]: 2, ranking[1]: 1}},
            f"2026-01-01T10:{k:02d}:30+00:00", f"f{k}")


def test_outcomes_that_name_unshown_candidates_or_predate_their_call_fail_validation(tmp_path):
    add = _adder(tmp_path)

    add("c1", "org.kubeflow.serving.inference.request", {"instances": [PASSAGE]}, "2026-01-01T10:00:00+00:00", "e1")
    add("c1", "org.kubeflow.serving.inference.response", {"predictions": [
        {"ranking": ["d1", "d0", "d2"]}]}, "2026-01-01T10:00:01+00:00", "e2")
    add("c1", FEEDBACK_TYPE, {"instance": 0, "grades": {"d1": 2, "d0": 0}}, "2026-01-01T10:05:00+00:00", "e3")
    built = build("feedback", tmp_path)
    assert validate_built(built).success
    assert [c.id for c in built.instances[0].candidates] == ["d1", "d0"]

    add("c1", FEEDBACK_TYPE, {"instance": 0, "chosen": ["d4"]}, "2026-01-01T09:00:00+00:00", "e4")
    report = validate_built(build("feedback", tmp_path))
    failed = {(c.suite, c.target) for c in report.failures}
    assert ("feedback.outcomes", "unknown_candidate") in failed and ("feedback.outcomes", "before_call") in failed
    assert "c1|0|d4" in json.dumps([c.examples for c in report.failures])
    assert isinstance(built.tables["outcomes"], pd.DataFrame)
