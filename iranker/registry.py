"""Model registry and promotion gate.

A registry is a folder or an object-store prefix (any fsspec URL: ``/srv/registry``, ``s3://bucket/iranker``;
S3 needs ``s3fs``). Layout::

    versions/v0001/model/            a transformers folder (what `iranker rank --model`, KServe and vLLM load)
    versions/v0001/metrics.json      the evaluation that promoted it (and per_instance.jsonl, report.md)
    versions/v0001/card.json         data version, code version, parameters, the gate's decision
    versions/v0001/MODEL_CARD.md     the same, for people
    production.json                  the pointer: {"version", "model_uri", "promoted_at", ...}
    decisions.jsonl                  every gate decision, promoted or rejected

A version exists once its card.json is written (the last file of an upload), so an interrupted upload leaves no
half version behind; the production pointer is one small object replaced in one write.

The gate (`gate`) compares a candidate with a reference - production, or the base model when there is none - on the
same evaluation instances, from `iranker evaluate`'s output (its paired comparisons and per-instance metrics).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any

PRODUCTION = "production.json"
DECISIONS = "decisions.jsonl"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    """Versions of the ranking model in a folder or object-store prefix."""

    def __init__(self, root: str | Path):
        import fsspec

        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """The URL of a path inside the registry (what manifests and model cards cite)."""
        path = self._p(*parts)
        return path if self.local else self.fs.unstrip_protocol(path)

    def _listed(self) -> list[str]:
        """Every folder under versions/, complete or not."""
        if not self.fs.exists(self._p("versions")):
            return []
        return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self._p("versions"), detail=False)]

    def versions(self) -> list[str]:
        """Complete versions (those with a card.json), oldest first."""
        return sorted(n for n in self._listed() if n.startswith("v") and self.fs.exists(self._p("versions", n,
                                                                                                   "card.json")))

    def card(self, version: str) -> dict[str, Any]:
        path = self._p("versions", version, "card.json")
        if not self.fs.exists(path):
            have = ", ".join(self.versions()) or "none"
            raise FileNotFoundError(f"registry {self.url}: no version {version!r} (have: {have})")
        return json.loads(self.fs.cat_file(path))

    def production(self) -> dict[str, Any] | None:
        """The production pointer, or None before the first promotion."""
        path = self._p(PRODUCTION)
        if not self.fs.exists(path):
            return None
        return json.loads(self.fs.cat_file(path))

    def model_path(self, version: str, cache: str | Path | None = None) -> Path:
        """A local transformers folder for a version: in place for a local registry, else downloaded to `cache`."""
        self.card(version)
        src = self._p("versions", version, "model")
        if self.local:
            return Path(src)
        dest = Path(cache or tempfile.mkdtemp(prefix="iranker-registry-")) / version
        if not (dest / "config.json").exists():
            self.fs.get(src.rstrip("/") + "/", str(dest), recursive=True)
        return dest

    def decisions(self) -> list[dict[str, Any]]:
        path = self._p(DECISIONS)
        if not self.fs.exists(path):
            return []
        return [json.loads(line) for line in self.fs.cat_file(path).decode().splitlines() if line.strip()]

    def add(self, model_dir: str | Path, card: dict[str, Any], eval_dir: str | Path | None = None) -> str:
        """Upload a model folder (and its evaluation) as the next version; returns the version name."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"{model_dir}: not a transformers model folder (no config.json)")
        numbers = [int(n[1:]) for n in self._listed() if n.startswith("v") and n[1:].isdigit()]
        version = f"v{max(numbers, default=0) + 1:04d}"
        target = self._p("versions", version)
        self.fs.makedirs(target, exist_ok=True)
        self.fs.put(str(model_dir).rstrip("/") + "/", self._p("versions", version, "model"), recursive=True)
        if eval_dir is not None:
            for name in ("metrics.json", "per_instance.jsonl", "report.md"):
                if (Path(eval_dir) / name).exists():
                    self.fs.put_file(str(Path(eval_dir) / name), self._p("versions", version, name))
        card = {**card, "version": version, "model_uri": self.uri("versions", version, "model"), "added_at": now()}
        self.fs.pipe_file(self._p("versions", version, "MODEL_CARD.md"), model_card(card).encode())
        self.fs.pipe_file(self._p("versions", version, "card.json"), json.dumps(card, indent=1).encode())
        return version

    def set_production(self, version: str, decision: dict[str, Any] | None = None) -> dict[str, Any]:
        card = self.card(version)
        pointer = {"version": version, "model_uri": card["model_uri"], "promoted_at": now(),
                   "previous": (self.production() or {}).get("version"), "decision": decision or {}}
        data = json.dumps(pointer, indent=1).encode()
        if self.local:  # write beside, then rename: readers see the old pointer or the new one, never half
            tmp = self._p(f".{PRODUCTION}.tmp")
            self.fs.pipe_file(tmp, data)
            Path(tmp).replace(self._p(PRODUCTION))
        else:
            self.fs.pipe_file(self._p(PRODUCTION), data)
        return pointer

    def record(self, decision: dict[str, Any]) -> None:
        """Append a gate decision to decisions.jsonl."""
        old = self.fs.cat_file(self._p(DECISIONS)) if self.fs.exists(self._p(DECISIONS)) else b""
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(self._p(DECISIONS), old + (json.dumps(decision) + "\n").encode())


def model_card(card: dict[str, Any]) -> str:
    """A Markdown model card from a registry card."""
    lines = [f"# iranker model {card.get('version', '')}", "",
             f"- model: `{card.get('model_uri', '')}`",
             f"- base model: `{card.get('base_model', '')}`",
             f"- data version: `{json.dumps(card.get('data_version', {}))}`",
             f"- code version: `{json.dumps(card.get('code_version', {}))}`",
             f"- training parameters: `{json.dumps(card.get('params', {}))}`", ""]
    decision = card.get("decision") or {}
    if decision:
        lines += ["## Promotion", "", decision_markdown(decision), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- gate

@dataclasses.dataclass
class GateConfig:
    tolerance: float = 0.02   # a scenario may be at most this much worse (lower end of the paired 95% interval)
    min_gain: float = 0.0     # the pooled primary-metric gain must have its lower interval end above this


def gate(metrics: dict[str, Any], per_instance: list[dict[str, Any]], config: GateConfig | None = None,
         reference: str = "base") -> dict[str, Any]:
    """Decide from `iranker evaluate` output (candidate = the evaluated system, reference = its base system).

    Promote when (1) on every (dataset, scenario) the paired 95% interval of the primary metric's difference
    candidate - reference has its lower end at or above -tolerance (not worse beyond the tolerance), and (2) over
    all instances pooled, the paired interval of the primary-metric difference lies above min_gain (better).
    """
    from iranker.metrics import paired_comparison

    config = config or GateConfig()
    system, against = metrics.get("system"), "base (iterative)"
    checks, reasons = [], []
    for r in metrics.get("results", []):
        primary = r["primary_metric"]
        comp = (r.get("comparison") or {}).get(primary)
        if comp is None:
            raise ValueError(f"metrics.json: {r['dataset']}/{r['scenario']} has no paired comparison of "
                             f"{primary!r}; evaluate the candidate with --model and the reference with --base")
        ok = comp["low"] >= -config.tolerance
        checks.append({"dataset": r["dataset"], "scenario": r["scenario"], "metric": primary,
                       "n": r["n_instances"], "candidate": r["metrics"][primary],
                       "reference": r["baselines"][against][primary], "diff": comp["diff"], "low": comp["low"],
                       "high": comp["high"], "p_value": comp["p_value"], "passed": ok})
        if not ok:
            reasons.append(f"{r['dataset']} ({r['scenario']}): {primary} may be worse than {reference} by more than "
                           f"{config.tolerance:g} (difference {comp['diff']:+.4f}, 95% interval "
                           f"[{comp['low']:+.4f}, {comp['high']:+.4f}], n={r['n_instances']})")
    if not checks:
        raise ValueError("metrics.json: no results to decide on")
    primary_of = {(r["dataset"], r["scenario"]): r["primary_metric"] for r in metrics["results"]}
    rows: dict[str, dict[str, dict]] = {}
    for row in per_instance:
        rows.setdefault(row["system"], {})[row["id"]] = row
    cand, ref = rows.get(system, {}), rows.get(against, {})
    ids = [i for i in cand if i in ref]
    if not ids:
        raise ValueError(f"per_instance.jsonl: no instances scored by both {system!r} and {against!r}")
    a = [cand[i][primary_of[(cand[i]["dataset"], cand[i]["scenario"])]] for i in ids]
    b = [ref[i][primary_of[(ref[i]["dataset"], ref[i]["scenario"])]] for i in ids]
    pooled = paired_comparison(a, b)
    better = pooled["low"] > config.min_gain
    if not better:
        reasons.append(f"not better than {reference} on the primary metrics: pooled difference {pooled['diff']:+.4f}, "
                       f"95% interval [{pooled['low']:+.4f}, {pooled['high']:+.4f}] over {len(ids)} instances "
                       f"(needs its lower end above {config.min_gain:g})")
    return {"promote": not reasons, "reference": reference, "candidate": metrics.get("model"),
            "reference_model": metrics.get("base"), "checks": checks,
            "pooled": {**pooled, "n": len(ids)}, "reasons": reasons, "config": dataclasses.asdict(config)}


def decision_markdown(decision: dict[str, Any]) -> str:
    verdict = "**promoted**" if decision["promote"] else "**rejected**"
    out = [(f"Decision: {verdict} (candidate against {decision['reference']}; tolerance "
            f"{decision['config']['tolerance']:g}, minimum pooled gain {decision['config']['min_gain']:g})"), "",
           "| dataset | scenario | metric | n | candidate | reference | difference [95% interval] | p | passed |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in decision["checks"]:
        out.append(f"| {c['dataset']} | {c['scenario']} | {c['metric']} | {c['n']} | {c['candidate']:.4f} | "
                   f"{c['reference']:.4f} | {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] | "
                   f"{c['p_value']:.3f} | {'yes' if c['passed'] else 'no'} |")
    p = decision["pooled"]
    out += ["", (f"Pooled primary metric over {p['n']} instances: {p['diff']:+.4f} "
                 f"[{p['low']:+.4f}, {p['high']:+.4f}] (wins {p['wins']}, losses {p['losses']}, ties {p['ties']}).")]
    general = decision.get("generic")
    if general:
        out += ["", f"General ability against the base (tolerance {general['tolerance']:g}):", ""]
        out += [f"- {name}: {t['metric']} {t['diff']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}], n={t['n']}"
                for name, t in general["tasks"].items()]
    if decision["reasons"]:
        out += ["", "Reasons:", *[f"- {r}" for r in decision["reasons"]]]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- GitOps manifest

def render_manifest(pointer: dict[str, Any], manifests_dir: str | Path) -> Path:
    """Write the GitOps change for a newly promoted version: `model.yaml` in `manifests_dir` (k8s/production), the
    ConfigMap from which every overlay's InferenceService takes its model URI and version label (kustomize
    replacements). Committing it is the change Argo CD syncs."""
    import yaml

    out = Path(manifests_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "iranker-production-model",
                     "labels": {"iranker.dev/model-version": pointer["version"]}},
        "data": {"version": pointer["version"], "model_uri": pointer["model_uri"],
                 "promoted_at": pointer["promoted_at"]},
    }
    path = out / "model.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# Rendered by the promotion step (iranker.registry.render_manifest); commit it to deploy.\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path
