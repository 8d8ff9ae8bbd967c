"""The offline checks of k8s/ (k8s/check.py): they pass on the repository and name file and field on broken copies."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "k8s" / "check.py")
check = importlib.util.module_from_spec(spec)
sys.modules["k8s_check"] = check
spec.loader.exec_module(check)

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


def test_every_overlay_builds_and_passes_every_check():
    failures, notes = check.run()
    assert failures == [], "\n".join(map(str, failures))
    if not check.SCHEMAS.is_dir():
        pytest.skip(f"custom resources were not schema-checked: {notes[0]}")
    kinds = {d["kind"] for name in check.KUSTOMIZATIONS for d in check.build(check.HERE, name)[0]}
    assert {"InferenceService", "ServingRuntime", "FeatureStore", "RayJob", "PyTorchJob", "Application",
            "PipelineVersion", "NetworkPolicy", "Deployment"} <= kinds


def test_the_production_model_reaches_the_inference_service_in_every_overlay():
    for overlay, field in (("overlays/minikube", "env"), ("overlays/gpu", "storageUri")):
        docs, _ = check.build(check.HERE, overlay)
        isvc = next(d for d in docs if d["kind"] == "InferenceService")
        if field == "env":
            env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
            uri = env["STORAGE_URI"]
        else:
            uri = isvc["spec"]["predictor"]["model"]["storageUri"]
            assert isvc["spec"]["transformer"]["containers"][0]["args"][3:5] == ["--backend", "openai"]
        assert uri == "hf://HuggingFaceTB/SmolLM2-135M-Instruct"  # k8s/production/model.yaml before a promotion
        assert isvc["metadata"]["labels"]["iranker.dev/model-version"] == "base"


def test_every_served_call_is_logged_to_the_collector_in_every_overlay():
    for overlay, part in (("overlays/minikube", "predictor"), ("overlays/gpu", "transformer")):
        docs, _ = check.build(check.HERE, overlay)
        isvc = next(d for d in docs if d["kind"] == "InferenceService")
        service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "iranker-collector")
        collector = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "iranker-collector")
        url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        # the calls users make (the transformer's, in front of vLLM) are what KServe's logger posts
        assert isvc["spec"][part]["logger"] == {"mode": "all", "url": url}
        assert "logger" not in isvc["spec"]["predictor"] or part == "predictor"
        args = isvc["spec"][part]["containers"][0]["args"]
        assert args[args.index("--log-url") + 1] == url and "--no-log-calls" in args  # feedback and outcomes only
        container = collector["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:3] == ["collect", "--out", "/var/lib/iranker/events"]
        assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["containerPort"]
        assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "iranker-events" for d in docs)


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_broken_manifests_are_caught_with_file_and_field(tmp_path):
    root = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", root)
    _edit(root / "base" / "inferenceservice.yaml", "        limits: {cpu: \"2\", memory: 4Gi}\n", "")
    _edit(root / "base" / "redis.yaml", "image: redis:7.4.2-alpine", "image: redis:latest")
    _edit(root / "base" / "redis.yaml", "  replicas: 1\n", "  replicas: 1\n  replicaz: 2\n")
    _edit(root / "minio" / "minio.yaml", "          allowPrivilegeEscalation: false\n", "")
    _edit(root / "base" / "collector.yaml", "          readOnlyRootFilesystem: true\n", "")
    _edit(root / "base" / "featurestore.yaml", "  feastProject: iranker", "  feastProjct: iranker")
    (root / "base" / "leak.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: leak\n"
                                             "stringData:\n  password: hunter2\n")
    _edit(root / "base" / "kustomization.yaml", "- redis.yaml\n", "- redis.yaml\n- leak.yaml\n")
    _edit(root / "training" / "kustomization.yaml", "- runs-pvc.yaml\n", "- runs-pvc.yaml\n- missing.yaml\n")
    _edit(root / "teardown.sh", 'kind delete cluster --name "${CLUSTER:-iranker}"', "kind delete cluster --name $1")
    failures, _ = check.run(root)
    found = {(f.check, f.where, f.field) for f in failures}
    expected = {
        ("resources", "k8s/base InferenceService/iranker",
         "spec.predictor.containers[kserve-container].resources.limits"),
        ("image-tag", "k8s/base Deployment/redis", "spec.template.spec.containers[redis].image"),
        ("kubernetes-validate", "k8s/base Deployment/redis", "spec"),
        ("security", "k8s/minio Deployment/minio",
         "spec.template.spec.containers[minio].securityContext.allowPrivilegeEscalation"),
        ("secrets", "k8s/base Secret/leak", "stringData"),
        ("security", "k8s/base Deployment/iranker-collector",
         "spec.template.spec.containers[collector].securityContext.readOnlyRootFilesystem"),
        ("kustomize", "k8s/training/kustomization.yaml", "-"),
    }
    assert expected <= found, "\n".join(map(str, failures))
    files = {(f.check, f.where): f.file for f in failures}
    assert files[("resources", "k8s/base InferenceService/iranker")] == "k8s/base/inferenceservice.yaml"
    assert files[("secrets", "k8s/base Secret/leak")] == "k8s/base/leak.yaml"
    assert files[("security", "k8s/minio Deployment/minio")] == "k8s/minio/minio.yaml"
    if check.SCHEMAS.is_dir():
        assert ("crd-schema", "k8s/base FeatureStore/iranker", "spec.feastProjct") in found
        assert any(f.check == "crd-schema" and "feastProject" in f.message for f in failures)  # required
    assert any(f.check == "shellcheck" and f.where == "k8s/teardown.sh" for f in failures)
    assert any("replicaz" in f.message for f in failures if f.check == "kubernetes-validate")
