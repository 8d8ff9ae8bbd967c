"""The loop on real data, end to end: held-out ml-100k users, RouterBench queries (through the router, stand-in LLMs
on loopback) and DL19 queries replayed through `iranker serve --log-url` by simulated users (`iranker replay`) who
post their outcomes; the collector is SIGKILLed mid-run and restarted; then the pipeline's own steps ingest and
validate the store, train the smoke profile on it, evaluate on its latest slice and let the gate decide."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest
from conftest import ROOT
from test_eventlog import Collector, _wait_for
from test_serving import Server
from test_serving_api import ChatStandIn

from iranker.data.feedback import FEEDBACK_TYPE, REQUEST_TYPE, RESPONSE_TYPE, ROUTE_OUTCOME_TYPE, read_events


def _replay(url, data, limit, seed):
    folders = [a for d in data for a in ("--data", str(d))]
    r = subprocess.run([sys.executable, "-m", "iranker.cli", "replay", "--url", url, *folders, "--limit", str(limit),
                        "--seed", str(seed), "--router", "iranker-router", "--clients", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow  # real servers, real data, a training run: about a minute
def test_replayed_users_outcomes_become_a_dataset_that_trains_and_is_gated(tiny_model_dir, shared_data, tmp_path):
    from iranker.features import UserFeatures
    from iranker.ingest import ingest
    from iranker.io import load_instances
    from iranker.pipeline import evaluate_step, features_step, feedback_step, promote_step, train_step, validate_step
    from iranker.settings import RankingSettings, write_settings

    # the public data, ingested; the users' features in a Feast repository of this test's own
    ml, rb, dl = tmp_path / "ml-100k", tmp_path / "routerbench", tmp_path / "dl19"
    ingest("recbole", shared_data / "recommendation" / "ml-100k", ml, {"max_users": "60"}, dvc=False)
    ingest("routerbench", shared_data / "routing" / "routerbench", rb, dvc=False)
    ingest("trec-dl", shared_data / "passage", dl, {"first_stage": "*bm25*"}, dvc=False)
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "*.db", "__pycache__"))
    features_step(str(ml), str(repo), str(rb))

    model = tmp_path / "served"  # the tiny model, ranking with short texts (its vocabulary spells words out)
    shutil.copytree(tiny_model_dir, model)
    write_settings(model, RankingSettings(max_words=8))
    models = sorted({c.id for i in load_instances(rb / "instances.jsonl") for c in i.candidates})
    llms = {n: ChatStandIn(n) for n in models}
    for n in models[::2]:  # half the LLMs are down: routed calls fall back, and the failures are outcomes too
        llms[n].fail_with = 503
    routes = tmp_path / "routes.yaml"
    routes.write_text(json.dumps({"router": "iranker-router", "timeout_s": 10, "routes": [
        {"name": n, "description": f"the {n} model", "cost_per_million_tokens": 1 + k, "base_url": llms[n].url}
        for k, n in enumerate(models)]}))
    store = tmp_path / "store"
    collector = Collector(store)
    server = Server("--model", str(model), "--feature-repo", str(repo), "--routes", str(routes),
                    "--log-url", collector.url, "--log-spool", str(tmp_path / "spool"))
    try:
        first = _replay(server.url, [ml, rb, dl], 4, 0)
        collector.kill()  # the second half is served while the sink is down: spooled, then sent
        second = _replay(server.url, [ml, rb, dl], 4, 1)
        collector = Collector(store, port=collector.port)
        runs = [first, second]
        answered = sum(r["answered"] for r in runs)
        outcomes = sum(sum(r["outcomes"].values()) for r in runs)
        routed = sum(r["calls"].get("routing", 0) for r in runs)
        assert all(not r["failed"] and not r["refused"] for r in runs), runs
        assert answered == sum(sum(r["calls"].values()) for r in runs) == 2 * (4 + 4 + 4)
        assert outcomes >= answered // 2

        def counts():
            return Counter(e["type"] for e in read_events(store))
        want = {REQUEST_TYPE: answered, RESPONSE_TYPE: answered, FEEDBACK_TYPE: outcomes, ROUTE_OUTCOME_TYPE: routed}
        assert _wait_for(lambda: counts() == want, timeout=120), (counts(), want)
    finally:
        server.close()
        collector.kill()
        for s in llms.values():
            s.close()

    # exactly once: one request/response pair per answered call, every event id once
    events = list(read_events(store))
    assert len({e["attributes"]["eventid"] for e in events}) == len(events)
    assert len({e["id"] for e in events if e["type"] == REQUEST_TYPE}) == answered
    # a user who took an item: their next request's history (Feast's online store) holds it
    requests = {e["id"]: e["data"] for e in events if e["type"] == REQUEST_TYPE}
    took = [e["data"] for e in events if e["type"] == FEEDBACK_TYPE and "chosen" in e["data"]]
    assert took, "no simulated user took an item"
    asked = requests[took[-1]["request_id"]]["instances"][0]
    titles = {c["id"]: c["text"] for c in asked["candidates"]}
    history = UserFeatures(repo).history(asked["user_id"])
    assert {titles[c] for c in took[-1]["chosen"]} <= set(history), (took[-1], history)

    # the pipeline's steps: ingest + validate, train the smoke profile on it, evaluate its latest slice, gate
    data = tmp_path / "data"
    step = feedback_step(str(store), {}, str(data), str(tmp_path / "feedback-artifact"), dvc=False)
    folder = data / "feedback"
    rows = [json.loads(line) for line in (folder / "instances.jsonl").read_text().splitlines()]
    calls = pd.read_parquet(folder / "tables" / "calls.parquet")  # every answered call, once, in the dataset
    assert len(calls) == calls["request_id"].nunique() == answered  # those served while the collector was down too
    # every outcome joined to its call: each recommendation and passage outcome is an instance; a routed call is one
    # when the answer was good after a failed LLM (two routes with grades, one above 0), else skipped and counted
    verdicts = {e["id"]: e["data"]["verdict"] for e in events if e["type"] == FEEDBACK_TYPE and "verdict" in e["data"]}
    fell_back = {e["id"] for e in events if e["type"] == ROUTE_OUTCOME_TYPE and e["data"]["failed"]}
    routing = sum(verdicts[r] == "good" for r in fell_back if r in verdicts)
    by_scenario = Counter(r["scenario"] for r in rows)
    assert step["counts"]["instances"] == len(rows) == outcomes - len(verdicts) + routing
    assert by_scenario["routing"] == routing and by_scenario["recommendation"] and by_scenario["passage"]
    assert sum(step["counts"]["skipped"].values()) == routed - routing, step["counts"]
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    validate_step(str(folder), str(tmp_path / "validation.md"))  # raises when an expectation fails
    trained = train_step("smoke", [str(folder)], [step["data_version"]], {"steps": 2}, str(tmp_path / "runs"),
                         str(tmp_path / "candidate"))
    assert trained["status"] == "trained"
    ev = evaluate_step([str(folder)], str(tmp_path / "candidate"), trained["base_model"], str(tmp_path / "registry"),
                       str(tmp_path / "evaluation"), baselines=["first-stage"])
    assert ev["n_instances"] == 2 * sum(r["split"] == "test" for r in rows)  # the latest slice, in both orders
    decision = promote_step(str(tmp_path / "candidate"), str(tmp_path / "evaluation"), str(tmp_path / "registry"),
                            str(tmp_path / "k8s"), {"data_version": [step["data_version"]]},
                            report=str(tmp_path / "decision.md"))
    # the gate decides either way (two tiny random models on a handful of instances): promoted exactly when it gave
    # no reason against, and the registry follows
    from iranker.registry import Registry

    assert decision["promoted"] is (not decision["reasons"])
    assert (Registry(tmp_path / "registry").production() or {}).get("version") == decision.get("version")
    assert (tmp_path / "decision.md").read_text().startswith("# Promotion decision")


def test_a_simulated_user_answers_from_the_gold_grades_and_replay_names_what_is_wrong(tmp_path):
    from iranker.schema import RankingInstance
    from serving.replay import outcome

    def inst(scenario, relevance, **kw):
        return RankingInstance.model_validate({
            "id": "i", "scenario": scenario, "dataset": "d", "relevance": relevance, **kw,
            "candidates": [{"id": c, "text": c} for c in ("a", "b", "c")]})

    rec = inst("recommendation", {"b": 1.0}, history=["x"])
    assert outcome(rec, "r", ["c", "b", "a"]) == {"request_id": "r", "chosen": ["b"]}
    assert outcome(rec, "r", ["c", "a"]) is None  # the item the user took was not shown
    passage = inst("passage", {"a": 2.0, "c": 0.0}, query="q")
    assert outcome(passage, "r", ["a", "b", "c"]) == {"request_id": "r", "grades": {"a": 2.0, "c": 0.0}}
    route = inst("routing", {"a": 1.0, "b": 1.0}, query="q", preference="performance")
    assert outcome(route, "r", "b")["verdict"] == "good" and outcome(route, "r", "c")["verdict"] == "bad"
    assert outcome(route, "r", "elsewhere") is None and outcome(route, "r", None) is None

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "iranker.cli", "replay", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=120, check=False)

    missing = cli("--url", "http://127.0.0.1:9", "--data", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "holds no instances.jsonl" in missing.stderr
    (tmp_path / "i.jsonl").write_text(passage.model_dump_json() + "\n")
    down = cli("--url", "http://127.0.0.1:9", "--data", str(tmp_path / "i.jsonl"))
    assert down.returncode != 0 and "--url http://127.0.0.1:9: ConnectError" in down.stderr, down.stderr[-2000:]
