"""The Kubeflow pipeline (compile, kfp.local runs), the model registry and the promotion gate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED_DATA

from iranker.metrics import paired_comparison
from iranker.registry import GateConfig, Registry, gate, render_manifest

sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------------- compiled YAML

def test_committed_pipeline_yaml_is_not_stale(tmp_path):
    from pipelines.iranker_pipeline import COMPILED, K8S_RESOURCES, compile_pipeline

    fresh = compile_pipeline(tmp_path / "p.yaml", k8s=tmp_path / "kfp.yaml")
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/iranker_pipeline.yaml is stale: run `iranker pipeline compile` and commit it")
    assert (tmp_path / "kfp.yaml").read_text() == K8S_RESOURCES.read_text(), (
        "k8s/kfp/pipeline.yaml is stale: run `iranker pipeline compile` and commit it")
    pipeline, version = yaml.safe_load_all(K8S_RESOURCES.read_text())
    assert version["spec"]["pipelineName"] == pipeline["metadata"]["name"] == "iranker"
    assert version["spec"]["pipelineSpec"]["pipelineInfo"]["name"] == "iranker"


def test_every_pipeline_parameter_is_typed_defaulted_and_described():
    from pipelines.iranker_pipeline import COMPILED

    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"profile", "registry", "tolerance", "min_gain", "recommendation_path", "eval_limit"} <= set(params)
    for name, p in params.items():
        assert p.get("description"), f"parameter {name} has no description"
        assert "defaultValue" in p and p.get("isOptional"), f"parameter {name} has no default"
        assert p["parameterType"] in {"STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN", "STRUCT", "LIST"}


def test_train_step_asks_for_a_gpu_and_the_cpu_compile_does_not(tmp_path):
    from pipelines.iranker_pipeline import COMPILED, compile_pipeline

    def train_settings(path):
        docs = list(yaml.safe_load_all(path.read_text()))
        spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
        container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
        k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        return container, k8s.get("exec-train", {}), spec

    container, k8s, spec = train_settings(COMPILED)
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert len(images) == 1 and not images.pop().endswith(":latest")
    # caching: off where a step reads or writes state outside its inputs
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["promote"]["cachingOptions"] == {}
    assert tasks["train"]["cachingOptions"] == {"enableCache": True}

    container, k8s, _ = train_settings(compile_pipeline(tmp_path / "cpu.yaml", gpu=None))
    assert "accelerator" not in container.get("resources", {}) and not k8s


# ------------------------------------------------------------------------------------------------------ gate

def _evaluation(groups: dict[tuple[str, str, str], tuple[list[float], list[float]]]):
    """metrics.json + per_instance rows as `iranker evaluate` writes them, from per-instance primary values of the
    candidate ("trained") and the reference ("base (iterative)")."""
    results, rows = [], []
    for (dataset, scenario, metric), (cand, ref) in groups.items():
        comp = paired_comparison(cand, ref)
        results.append({"dataset": dataset, "scenario": scenario, "n_instances": len(cand), "primary_metric": metric,
                        "metrics": {metric: sum(cand) / len(cand)},
                        "baselines": {"base (iterative)": {metric: sum(ref) / len(ref)}},
                        "comparison": {"system": "trained", "against": "base (iterative)", metric: comp}})
        for k, (c, r) in enumerate(zip(cand, ref, strict=True)):
            for system, v in (("trained", c), ("base (iterative)", r)):
                rows.append({"id": f"{dataset}-{k}", "dataset": dataset, "scenario": scenario, "system": system,
                             metric: v})
    return {"model": "cand", "system": "trained", "base": "ref", "results": results}, rows


def _spread(n, lo, hi):
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


GOOD = ("ml", "recommendation", "mrr"), ("rb", "routing", "ndcg@3")


def test_gate_promotes_a_candidate_better_overall_and_not_worse_anywhere():
    ref = _spread(60, 0.1, 0.5)
    metrics, rows = _evaluation({GOOD[0]: ([v + 0.15 for v in ref], ref), GOOD[1]: (list(ref), ref)})
    d = gate(metrics, rows, GateConfig(tolerance=0.02))
    assert d["promote"], d["reasons"]
    assert [c["passed"] for c in d["checks"]] == [True, True]
    assert d["pooled"]["low"] > 0 and d["pooled"]["n"] == 120


def test_gate_rejects_a_candidate_worse_on_one_scenario_beyond_the_tolerance():
    ref = _spread(60, 0.1, 0.5)
    metrics, rows = _evaluation({GOOD[0]: ([v + 0.3 for v in ref], ref), GOOD[1]: ([v - 0.1 for v in ref], ref)})
    d = gate(metrics, rows, GateConfig(tolerance=0.02))
    assert not d["promote"]
    assert d["pooled"]["low"] > 0  # better pooled, yet worse on routing
    assert [c["passed"] for c in d["checks"]] == [True, False]
    assert any(r.startswith("rb (routing): ndcg@3 may be worse") for r in d["reasons"])
    assert gate(metrics, rows, GateConfig(tolerance=0.2))["promote"]  # a looser tolerance lets it through


def test_gate_rejects_a_candidate_that_is_not_better():
    ref = _spread(40, 0.1, 0.5)
    metrics, rows = _evaluation({GOOD[0]: (list(ref), ref), GOOD[1]: (list(ref), ref)})
    d = gate(metrics, rows)
    assert not d["promote"] and d["pooled"]["diff"] == 0
    assert d["reasons"] == [r for r in d["reasons"] if r.startswith("not better than base")]


def test_gate_needs_paired_comparisons():
    metrics, rows = _evaluation({GOOD[0]: ([0.5, 0.6], [0.4, 0.5])})
    metrics["results"][0]["comparison"] = {}
    with pytest.raises(ValueError, match="no paired comparison of 'mrr'"):
        gate(metrics, rows)


# -------------------------------------------------------------------------------------------------- registry

def _model_dir(tmp_path, name="m"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "name": name}))
    (d / "model.safetensors").write_bytes(b"weights-" + name.encode())
    return d


@pytest.mark.parametrize("root", ["local", "memory://iranker-test/registry"])
def test_registry_versions_production_pointer_and_cards(tmp_path, root):
    reg = Registry(tmp_path / "reg" if root == "local" else root)
    assert reg.versions() == [] and reg.production() is None
    v1 = reg.add(_model_dir(tmp_path, "a"), {"data_version": ["d1"], "code_version": {"git": "abc"}})
    v2 = reg.add(_model_dir(tmp_path, "b"), {"data_version": ["d2"]})
    assert (v1, v2) == ("v0001", "v0002") and reg.versions() == ["v0001", "v0002"]
    assert reg.production() is None  # adding is not promoting
    pointer = reg.set_production(v1, {"reason": "first"})
    assert reg.production()["version"] == "v0001" and pointer["previous"] is None
    assert reg.set_production(v2)["previous"] == "v0001"
    card = reg.card(v1)
    assert card["data_version"] == ["d1"] and card["model_uri"].endswith("versions/v0001/model")
    local = reg.model_path(v2, tmp_path / "cache")
    assert (local / "model.safetensors").read_bytes() == b"weights-b"
    with pytest.raises(FileNotFoundError, match="no version 'v0009'"):
        reg.card("v0009")
    # an interrupted upload (no card.json yet) is not a version
    reg.fs.makedirs(reg._p("versions", "v0003", "model"), exist_ok=True)
    assert reg.versions() == ["v0001", "v0002"]
    if root != "local":
        reg.fs.rm(reg.root, recursive=True)


def test_registry_refuses_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        Registry(tmp_path / "reg").add(tmp_path, {})


def test_rendered_manifest_points_kserve_at_the_version(tmp_path):
    path = render_manifest({"version": "v0007", "model_uri": "s3://iranker/registry/versions/v0007/model",
                            "promoted_at": "2026-01-01T00:00:00+00:00"}, tmp_path / "k8s")
    doc = yaml.safe_load(path.read_text())
    assert path.name == "model.yaml" and doc["kind"] == "ConfigMap"
    assert doc["metadata"]["name"] == "iranker-production-model"
    assert doc["data"]["model_uri"].endswith("v0007/model") and doc["data"]["version"] == "v0007"


def _eval_dir(tmp_path, metrics, rows, production_version=None, name="eval"):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "per_instance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "reference.json").write_text(json.dumps({
        "reference": f"production {production_version}" if production_version else "base",
        "reference_model": "x", "production_version": production_version}))
    return d


def test_promote_step_first_model_then_a_rejection_that_changes_nothing(tmp_path):
    from iranker.pipeline import promote_step

    reg_dir, k8s = tmp_path / "registry", tmp_path / "k8s"
    ref = _spread(50, 0.1, 0.6)
    good = _eval_dir(tmp_path, *_evaluation({GOOD[0]: ([v + 0.1 for v in ref], ref), GOOD[1]: (ref, ref)}))
    card = {"data_version": ["abc"], "code_version": {"iranker": "0.1.0", "git": "deadbeef"}, "params": {"steps": 3}}
    first = promote_step(str(_model_dir(tmp_path, "cand1")), str(good), str(reg_dir), str(k8s), card,
                         report=str(tmp_path / "decision1.md"))
    assert first["promoted"] and first["version"] == "v0001" and first["reference"] == "base"
    reg = Registry(reg_dir)
    assert reg.production()["version"] == "v0001"
    assert reg.card("v0001")["code_version"]["git"] == "deadbeef"
    assert (reg_dir / "versions" / "v0001" / "metrics.json").exists()
    assert "data version" in (reg_dir / "versions" / "v0001" / "MODEL_CARD.md").read_text()
    manifest = (k8s / "model.yaml").read_bytes()
    assert b"v0001" in manifest
    assert "**promoted**" in (tmp_path / "decision1.md").read_text()

    # a second candidate, evaluated against production v0001, worse on recommendation: rejected
    bad = _eval_dir(tmp_path, *_evaluation({GOOD[0]: ([v - 0.2 for v in ref], ref), GOOD[1]: (ref, ref)}),
                    production_version="v0001", name="eval2")
    second = promote_step(str(_model_dir(tmp_path, "cand2")), str(bad), str(reg_dir), str(k8s), card,
                          report=str(tmp_path / "decision2.md"))
    assert not second["promoted"] and second["production"] == "v0001"
    assert reg.versions() == ["v0001"] and reg.production()["version"] == "v0001"
    assert (k8s / "model.yaml").read_bytes() == manifest
    text = (tmp_path / "decision2.md").read_text()
    assert "**rejected**" in text and "ml (recommendation): mrr may be worse than production v0001" in text
    assert [d["promote"] for d in reg.decisions()] == [True, False]

    # an evaluation made against an older production is refused
    with pytest.raises(RuntimeError, match="production moved to v0001"):
        promote_step(str(_model_dir(tmp_path, "cand3")), str(good), str(reg_dir), str(k8s), card)


# ------------------------------------------------------------------------------------------ kfp.local runs

def _local_params(tmp_path, **extra):
    shutil.copytree(ROOT / "feature_repo", tmp_path / "feature_repo", ignore=shutil.ignore_patterns("data"))
    return {"data_dir": str(tmp_path / "data"), "dvc": False, "feature_repo": str(tmp_path / "feature_repo"),
            "profile": "smoke", "runs_dir": str(tmp_path / "runs"), "registry": str(tmp_path / "registry"),
            "manifests_dir": str(tmp_path / "k8s"), "baselines": ["first-stage", "popularity"], **extra}


@pytest.mark.slow
def test_local_pipeline_promotes_the_first_model_then_rejects_and_reuses_training(tmp_path):
    from test_feedback import write_feedback_store

    from pipelines.iranker_pipeline import run_local, task_outputs

    write_feedback_store(tmp_path / "store")  # served calls and their outcomes, trained on beside the public data
    params = _local_params(tmp_path, feedback_path=str(tmp_path / "store"))
    lines: list[str] = []
    # 1: a lenient gate, so that the first model is promoted against the base model
    run = run_local(tmp_path / "root", log_file=tmp_path / "1.log", echo=lines.append,
                    **{**params, "tolerance": 1.0, "min_gain": -1.0})
    assert any("Executing task 'train'" in line for line in lines)
    assert any("promoted v0001 to production (was base)" in line for line in lines)
    reg = Registry(tmp_path / "registry")
    assert reg.production()["version"] == "v0001"
    card = reg.card("v0001")
    assert card["profile"] == "smoke" and card["params"]["steps"] == 6
    assert len(card["data_version"]) == 4 and card["code_version"]["iranker"]
    assert (tmp_path / "data" / "routing" / "instances.jsonl").exists()
    assert len((tmp_path / "data" / "feedback" / "instances.jsonl").read_text().splitlines()) == 10
    manifest = (tmp_path / "k8s" / "model.yaml").read_bytes()
    metrics = json.loads((run / "evaluate" / "evaluation" / "metrics.json").read_text())
    assert {r["scenario"] for r in metrics["results"]} == {"recommendation", "routing", "passage"}
    # the report artifact the UI shows carries the per-scenario plots inline
    shown = (run / "evaluate" / "report").read_text()
    assert shown.count("](data:image/png;base64,") == len(metrics["results"]) + 1  # and the training reward
    # the gate also reads the feedback's held-out slice: its latest 2 of 10 queries
    assert [r["n_instances"] for r in metrics["results"] if r["dataset"] == "feedback"] == [2]
    assert all({"random (expected)", "first-stage", "base (iterative)"} <= set(r["baselines"]) for r in metrics["results"])
    assert all("popularity" in r["baselines"] for r in metrics["results"] if r["scenario"] == "recommendation")
    # the user features are in the Feast online store
    from iranker.features import UserFeatures

    users = [json.loads(line)["user_id"] for line in (tmp_path / "data" / "recommendation" / "instances.jsonl")
             .read_text().splitlines()]
    assert UserFeatures(tmp_path / "feature_repo").history(users[0])

    # 2: through the CLI, the default gate against production v0001; the same configuration and data reuse the
    # finished run
    cli = [sys.executable, "-m", "iranker.cli", "pipeline", "run", "--local", "--profile", "smoke",
           "--root", str(tmp_path / "root"), "--registry", str(tmp_path / "registry"), "--no-dvc"]
    for key in ("data_dir", "feature_repo", "runs_dir", "manifests_dir", "feedback_path"):
        cli += ["--param", f"{key}={params[key]}"]
    cli += ["--param", "baselines=[first-stage, popularity]", "--param", "min_gain=0.0"]
    gsm8k = SHARED_DATA / "generic" / "gsm8k_test.jsonl"
    if gsm8k.exists():  # general ability too: lm-evaluation-harness's GSM8K, candidate against its base
        cli += ["--param", "generic_tasks=gsm8k", "--param", "generic_limit=2", "--param",
                f"generic_data={gsm8k.parent}"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["promoted"] is False and "**rejected**" in Path(out["decision"]).read_text()
    if gsm8k.exists():
        assert "General ability against the base (tolerance 0.02):" in Path(out["decision"]).read_text()
    second = next(p for p in Path(out["decision"]).parents if p.parent == tmp_path / "root")  # this run's folder
    generic = second / "evaluate-generic" / "generic"
    if gsm8k.exists():
        assert json.loads((generic / "generic.json").read_text())["tasks"]["gsm8k"]["n"] == 2
    assert (run / "evaluate-generic" / "generic" / "NO_DATA").exists()  # the first run checked no general ability
    assert "reusing the finished run" in proc.stderr and "against the production v0001 model" in proc.stderr
    assert "Decision: **rejected**" in proc.stderr and "recommendation" in proc.stderr  # results table + decision
    assert len(proc.stderr.splitlines()) < 400  # the runner's full output went to the log, not the terminal
    assert "Executing task 'promote'" in Path(out["log"]).read_text()
    assert reg.versions() == ["v0001"] and reg.production()["version"] == "v0001"
    assert (tmp_path / "k8s" / "model.yaml").read_bytes() == manifest
    assert task_outputs(run, "promote")["Output"] is True


@pytest.mark.slow
def test_a_validation_failure_stops_the_pipeline_and_leaves_data_and_registry_alone(tmp_path):
    from pipelines.iranker_pipeline import run_local

    rows = [json.loads(line) for line in (ROOT / "samples" / "instances.jsonl").read_text().splitlines()]
    routing = [r for r in rows if r["scenario"] == "routing"]
    routing[1]["id"] = routing[0]["id"]  # duplicate instance ids: the Great Expectations suite fails
    bad = tmp_path / "routing.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in routing))
    params = _local_params(tmp_path, routing_source="instances", routing_path=str(bad))
    (tmp_path / "data" / "routing").mkdir(parents=True)
    (tmp_path / "data" / "routing" / "previous.txt").write_text("earlier data")
    lines: list[str] = []
    with pytest.raises(RuntimeError):
        run_local(tmp_path / "root", log_file=tmp_path / "run.log", echo=lines.append, **params)
    shown = "\n".join(lines)
    assert "finished with status FAILURE" in shown and "expect_column_values_to_be_unique" in shown
    assert not any("Executing task 'train'" in line for line in lines)
    assert [p.name for p in (tmp_path / "data" / "routing").iterdir()] == ["previous.txt"]
    assert not (tmp_path / "registry").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_pipeline_compile_and_submit_errors(tmp_path):
    out = tmp_path / "p.yaml"
    proc = subprocess.run([sys.executable, "-m", "iranker.cli", "pipeline", "compile", "--out", str(out), "--no-gpu"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pipeline"] == str(out) and "train step: CPU" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "iranker.cli", "pipeline", "run", "--local", "--param", "nope=1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--param nope: not a pipeline parameter" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "iranker.cli", "pipeline", "submit", "--host", "http://127.0.0.1:9",
                           "--package", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no such file; run `iranker pipeline compile` first" in proc.stderr


# ------------------------------------------------------------------------------------------------------ submit

class _KFPStandIn:
    """A loopback server answering the Kubeflow Pipelines v2beta1 REST calls `submit` makes, recording them."""

    def __init__(self):
        import http.server
        import threading

        calls = self.calls = []
        pipelines: dict = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                calls.append(("GET", self.path, b""))
                path = self.path.split("?")[0]
                if path.endswith("/healthz"):
                    return self._reply({"multi_user": False})
                if path == "/apis/v2beta1/pipelines":
                    return self._reply({"pipelines": list(pipelines.values())} if pipelines else {})
                if path.endswith("/versions"):
                    return self._reply({"pipeline_versions": [{"pipeline_id": "p1", "pipeline_version_id": "pv1",
                                                               "display_name": "iranker"}]})
                if path == "/apis/v2beta1/experiments":
                    return self._reply({})
                return self._reply({})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                calls.append(("POST", self.path, body))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/pipelines/upload":
                    pipelines["p1"] = {"pipeline_id": "p1", "display_name": "iranker"}
                    return self._reply(pipelines["p1"])
                if path == "/apis/v2beta1/pipelines/upload_version":
                    return self._reply({"pipeline_id": "p1", "pipeline_version_id": "pv2", "display_name": "v2"})
                if path == "/apis/v2beta1/experiments":
                    return self._reply({"experiment_id": "e1", "display_name": json.loads(body)["display_name"]})
                if path == "/apis/v2beta1/runs":
                    return self._reply({"run_id": "r1", **json.loads(body)})
                if path == "/apis/v2beta1/recurringruns":
                    return self._reply({"recurring_run_id": "rr1", **json.loads(body)})
                return self._reply({})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_submit_uploads_the_pipeline_then_new_versions_and_starts_runs():
    from pipelines.iranker_pipeline import COMPILED, submit

    kfp = _KFPStandIn()
    try:
        first = submit(kfp.url, experiment="ranking", params={"profile": "cpu", "eval_limit": 50})
        second = submit(kfp.url, experiment="ranking", version="v2")
        nightly = submit(kfp.url, version="v3", cron="0 0 3 * * *")
    finally:
        kfp.server.shutdown()
    assert first["pipeline_id"] == "p1" and first["version_id"] == "pv1" and first["run_id"] == "r1"
    assert first["url"] == f"{kfp.url}/#/runs/details/r1"
    assert second["version_id"] == "pv2"  # an existing pipeline gets a new version
    posts = [(p.split("?")[0], body) for method, p, body in kfp.calls if method == "POST"]
    assert [p for p, _ in posts] == ["/apis/v2beta1/pipelines/upload", "/apis/v2beta1/experiments",
                                     "/apis/v2beta1/runs", "/apis/v2beta1/pipelines/upload_version",
                                     "/apis/v2beta1/experiments", "/apis/v2beta1/runs",
                                     "/apis/v2beta1/pipelines/upload_version", "/apis/v2beta1/experiments",
                                     "/apis/v2beta1/recurringruns"]
    assert b"PIPELINE DEFINITION" in posts[0][1] and COMPILED.read_bytes()[:200] in posts[0][1]
    run = json.loads(posts[2][1])
    assert run["experiment_id"] == "e1"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p1", "pipeline_version_id": "pv1"}
    assert run["runtime_config"]["parameters"] == {"profile": "cpu", "eval_limit": 50}
    assert nightly["recurring_run_id"] == "rr1"
    schedule = json.loads(posts[-1][1])
    assert schedule["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *" and int(schedule["max_concurrency"]) == 1


def test_train_step_resumes_a_killed_run_and_reuses_a_finished_one(tmp_path):
    import hashlib

    from iranker.ingest import ingest
    from iranker.pipeline import profile_path, train_step
    from iranker.train import load_config
    from iranker.train.loop import run_training

    data = tmp_path / "routing"
    ingest("routerbench", ROOT / "samples" / "routerbench", data, dvc=False)
    cfg = load_config(profile_path("smoke"), {"data": [str(data)]})
    key = hashlib.sha256(json.dumps({"config": cfg.model_dump(exclude={"data"}), "data": ["v1"]}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    run_training(cfg, tmp_path / "runs" / key, progress=False, stop_after=2)  # a run killed after 2 updates
    first = train_step("smoke", [str(data)], ["v1"], {}, str(tmp_path / "runs"), str(tmp_path / "m1"))
    assert first["status"] == "resumed" and first["run"] == str(tmp_path / "runs" / key)
    assert (tmp_path / "m1" / "config.json").exists() and (tmp_path / "m1" / "metrics.jsonl").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "m1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # updates 1-2 from the killed run, 3-6 after resuming
    again = train_step("smoke", [str(data)], ["v1"], {}, str(tmp_path / "runs"), str(tmp_path / "m2"))
    assert again["status"] == "reused"
    other = train_step("smoke", [str(data)], ["v2"], {"steps": 2}, str(tmp_path / "runs"), str(tmp_path / "m3"))
    assert other["status"] == "trained" and other["run"] != first["run"]  # new data version: a new run


def test_train_step_starts_over_a_run_killed_before_its_first_checkpoint(tmp_path):
    from iranker.ingest import ingest
    from iranker.pipeline import train_step

    data = tmp_path / "routing"
    ingest("routerbench", ROOT / "samples" / "routerbench", data, dvc=False)
    first = train_step("smoke", [str(data)], ["v1"], {"steps": 2}, str(tmp_path / "runs"), str(tmp_path / "m1"))
    run = Path(first["run"])
    # what a run killed during its first update leaves: its config, a log line, the TensorBoard folder
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "stale": True}) + "\n")
    again = train_step("smoke", [str(data)], ["v1"], {"steps": 2}, str(tmp_path / "runs"), str(tmp_path / "m2"))
    assert again["status"] == "trained" and again["run"] == str(run)
    rows = [json.loads(line) for line in (tmp_path / "m2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and not any(r.get("stale") for r in rows)
