"""The workflow's steps as library functions: the Kubeflow components (`components/`) are thin shells over these,
and the pipeline (`pipelines/iranker_pipeline.py`) wires them together.

    ingest_step -> validate_step -> features_step
                                 -> train_step -> evaluate_step -> promote_step
    feedback_step (optional: served calls and their outcomes) ---^ ------^

Every step takes and returns plain paths and JSON-able dicts (the metadata its artifact records: data version,
code version, parameters), so it runs the same in `kfp.local`, on a cluster, and from Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from iranker.version import code_version

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("smoke", "demo", "cpu", "gpu-3b")


def _say(msg: str) -> None:
    log.info(msg)


def resolve_path(path: str | Path) -> Path:
    """Relative input paths are resolved against the project root (the working copy, or /app in the image)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def open_registry(location: str):
    """The registry at an fsspec URL (s3://...) or a folder (relative to the project root)."""
    from iranker.registry import Registry

    return Registry(location if "://" in location else resolve_path(location))


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy a folder, hard-linking files where the filesystem allows (model folders are hundreds of MB)."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, copy_function=link_or_copy)


# ------------------------------------------------------------------------------------------------------- ingest

def ingest_step(source: str, path: str, params: dict[str, Any], data_dir: str, name: str, out: str,
                dvc: bool = True) -> dict[str, Any]:
    """Ingest a public source into `data_dir/name` (validated with Great Expectations, written atomically, DVC
    tracked and pushed when `data_dir` lies in a DVC repository), then copy the folder to the artifact `out`."""
    from iranker.data import PROVENANCE
    from iranker.ingest import ingest

    target = resolve_path(data_dir) / name
    result = ingest(source, resolve_path(path), target, {k: str(v) for k, v in (params or {}).items()},
                    dvc=dvc, progress=_say)
    _copy_tree(target, Path(out))
    manifest = result.manifest
    return {"source": source, "path": str(path), "dataset": manifest["dataset"], "scenario": manifest["scenario"],
            "counts": manifest["counts"], "params": manifest["params"], "dvc": result.dvc,
            "data_version": dataset_version(Path(out)),
            "code_version": json.loads((Path(out) / PROVENANCE).read_text())}


NO_DATA = "NO_DATA"  # the marker of an optional input left out (a dataset artifact without data)


def feedback_step(path: str, params: dict[str, Any], data_dir: str, out: str, dvc: bool = True) -> dict[str, Any]:
    """The optional feedback input: a collector's store (`iranker collect --out DIR`) ingested like the public
    data (`ingest_step`, source `feedback`) into `data_dir/feedback`; with no path, an artifact marked NO_DATA
    that the train and evaluate steps leave out."""
    if not path:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / NO_DATA).write_text("no feedback was given to this run (pipeline parameter feedback_path)\n")
        return {"source": "feedback", "path": "", "counts": {"instances": 0}, "data_version": ""}
    return ingest_step("feedback", path, params, data_dir, "feedback", out, dvc=dvc)


def present(datasets: list[str]) -> list[str]:
    """The dataset folders that hold data (an optional input left out is marked NO_DATA)."""
    return [d for d in datasets if not (Path(d) / NO_DATA).exists()]


def dataset_version(folder: Path) -> str:
    """A content version of a dataset folder: the hash of its manifest's output hashes (what DVC stores)."""
    from iranker.data import read_manifest

    outputs = read_manifest(folder)["outputs"]
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------- validate

def validate_step(folder: str, report: str) -> dict[str, Any]:
    """Run the Great Expectations suites on a dataset folder; write the Markdown report; raise when they fail."""
    from iranker.validation import ValidationFailed, validate_dir

    result = validate_dir(folder)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(result.to_markdown())
    summary = {k: v for k, v in result.summary().items() if isinstance(v, (int, float, str, bool))}
    if not result.success:
        raise ValidationFailed(result)
    _say(f"{folder}: {len(result.checks)} expectations passed")
    return {**summary, "data_version": dataset_version(Path(folder))}


# ----------------------------------------------------------------------------------------------------- features

def features_step(folder: str, repo: str, routing: str | None = None) -> dict[str, Any]:
    """Write the Feast sources from the recommendation data (user context, item attributes) and the routing data
    (routed models' price and quality), apply the definitions, load the online store."""
    import contextlib

    from iranker import features

    repo_path = resolve_path(repo)
    tables = features.build_feature_tables([folder] + ([routing] if routing else []), repo_path)
    with contextlib.redirect_stdout(sys.stderr):
        applied = features.apply(repo_path)
        rows = features.materialize(repo_path)
    _say(f"Feast: applied {', '.join(applied)}; materialized {rows}")
    return {"repo": str(repo_path), "applied": applied, "materialized": rows,
            "rows": {k: len(v) for k, v in tables.items()}, "data_version": dataset_version(Path(folder))}


# -------------------------------------------------------------------------------------------------------- train

def profile_path(profile: str) -> Path:
    """A profile name (smoke, demo, cpu, gpu-3b) -> configs/NAME.yaml; a path -> itself."""
    if profile in PROFILES:
        return ROOT / "configs" / f"{profile}.yaml"
    p = resolve_path(profile)
    if not p.exists():
        raise FileNotFoundError(f"profile: {profile!r} is neither one of {', '.join(PROFILES)} nor a file")
    return p


def train_step(profile: str, datasets: list[str], data_versions: list[str], overrides: dict[str, Any],
               runs_dir: str, out: str, templates_k: int = 0) -> dict[str, Any]:
    """Train on the datasets with a profile; the run folder is keyed by the configuration and the data versions, so
    a re-run reuses a finished run and resumes a killed one from its last checkpoint. Copies the final model to
    `out` (a transformers folder). `templates_k` > 0 saves the model to be shown that many of its own thought
    templates per request (`ranking.templates_k`; reasoning mode keeps the store), wherever it ranks next: the
    evaluate step, the gate and the server."""
    from iranker.train import load_config
    from iranker.train.loop import run_training
    from iranker.train.modeling import base_model_path

    datasets, data_versions = present(datasets), [v for v in data_versions if v]
    cfg = load_config(profile_path(profile), {**(overrides or {}), **({"ranking.templates_k": templates_k}
                                                                       if templates_k else {}),
                                              "data": list(datasets)})
    settings = cfg.model_dump(exclude={"data"})
    key = hashlib.sha256(json.dumps({"config": settings, "data": sorted(data_versions)}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    run = resolve_path(runs_dir) / key
    final = run / "final"
    if (final / "config.json").exists():
        _say(f"training: reusing the finished run {run} (same configuration and data versions)")
        status = "reused"
    else:
        # a killed run resumes from its last checkpoint; one killed before its first starts over in its folder
        resume = (run / "checkpoints" / "latest").exists()
        _say(f"training: {'resuming' if resume else 'starting'} run {run}")
        final = run_training(cfg, run, resume=run.is_dir() and any(run.iterdir()), progress=True)
        status = "resumed" if resume else "trained"
    _copy_tree(Path(final), Path(out))
    for curve in ("metrics.jsonl", "probe.jsonl"):
        if (run / curve).exists():
            shutil.copy2(run / curve, Path(out) / curve)  # reward curves for the report
    return {"run": str(run), "status": status, "profile": profile, "base_model": base_model_path(cfg, run),
            "params": json.loads(json.dumps(settings, default=str)), "data_version": sorted(data_versions),
            "code_version": code_version()}


# ----------------------------------------------------------------------------------------------------- evaluate

def evaluate_step(datasets: list[str], model: str, base_model: str, registry: str, out: str, limit: int = 0,
                  baselines: list[str] | None = None, max_words: int = 0) -> dict[str, Any]:
    """Evaluate the candidate on the test splits against the reference - the production model of the registry, or
    the base model before the first promotion - and the simple baselines, on the same instances. Each model ranks
    under the ranking settings saved with it; `max_words` > 0 overrides them (with a warning)."""
    from iranker.evaluate.baselines import BASELINES
    from iranker.evaluate.harness import evaluate, load_eval_data

    reg = open_registry(registry)
    prod = reg.production()
    if prod:
        reference, reference_name = str(reg.model_path(prod["version"], Path(out) / ".registry-cache")), \
            f"production {prod['version']}"
    else:
        reference, reference_name = base_model, "base"
    _say(f"evaluating the candidate against the {reference_name} model ({reference})")
    data = load_eval_data(present(datasets), split="test", limit=limit)  # feedback's test split: its latest slice
    metrics = evaluate(data, out, model=model, base=reference, direct=False,
                       baselines=list(BASELINES) if baselines is None else baselines, max_words=max_words or None,
                       train_run=model if (Path(model) / "metrics.jsonl").exists() else None)
    shutil.rmtree(Path(out) / ".registry-cache", ignore_errors=True)
    reference_info = {"reference": reference_name, "reference_model": reference,
                      "production_version": (prod or {}).get("version")}
    (Path(out) / "reference.json").write_text(json.dumps(reference_info, indent=1))
    return {**reference_info, "n_instances": metrics["n_instances"],
            "primary": {f"{r['dataset']}/{r['scenario']}/{r['primary_metric']}": r["metrics"][r["primary_metric"]]
                        for r in metrics["results"]}}


def generic_step(model: str, base_model: str, tasks: str, limit: int, data_dir: str, out: str) -> dict[str, Any]:
    """The optional general-ability check (`iranker evaluate generic`): the candidate against its base model on the
    comma-separated lm-evaluation-harness `tasks`, at most `limit` documents each, the task files in `data_dir`
    (empty: $IRANKER_GENERIC_DATA or ../shared/data/generic). With no tasks, an artifact marked NO_DATA that the
    gate leaves out. A task that runs the model's code (humaneval) runs it: naming it in the pipeline's
    generic_tasks is the confirmation `iranker evaluate generic` asks for, and the step's container its boundary."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / NO_DATA).write_text("no general-ability tasks were given to this run (pipeline parameter "
                                         "generic_tasks)\n")
        return {"tasks": []}
    from iranker.evaluate.generic import evaluate_generic

    result = evaluate_generic(model, names, out, base=base_model, limit=limit, folder=data_dir or None,
                              confirm_run_unsafe_code=True, progress=_say)
    return {"tasks": names, "n": {n: t["n"] for n, t in result["tasks"].items()},
            "difference": {f"{n}/{t['primary_metric']}": t["comparison"]["diff"] for n, t in result["tasks"].items()}}


# ------------------------------------------------------------------------------------------------------ promote

def promote_step(model: str, evaluation: str, registry: str, manifests_dir: str, card: dict[str, Any],
                 tolerance: float = 0.02, min_gain: float = 0.0, report: str | None = None,
                 generic: str | None = None, generic_tolerance: float = 0.02) -> dict[str, Any]:
    """Gate the candidate on its evaluation; on promotion add it to the registry, move the production pointer and
    render the KServe manifest change; on rejection change nothing but the decision log. Writes the decision as
    Markdown to `report`. With `generic` (a folder from `iranker evaluate generic` with the candidate against its
    base), a task whose score may have dropped below the base's by more than `generic_tolerance` also rejects."""
    from iranker.registry import GateConfig, decision_markdown, gate, now, render_manifest
    from iranker.settings import read_settings

    ev = Path(evaluation)
    metrics = json.loads((ev / "metrics.json").read_text())
    per_instance = [json.loads(line) for line in (ev / "per_instance.jsonl").read_text().splitlines() if line]
    ref = json.loads((ev / "reference.json").read_text())
    reg = open_registry(registry)
    prod = reg.production()
    if (prod or {}).get("version") != ref["production_version"]:
        raise RuntimeError(f"registry {reg.url}: production moved to {prod and prod['version']} after the evaluation "
                           f"against {ref['reference']}; re-run the evaluation")
    decision = gate(metrics, per_instance, GateConfig(tolerance=tolerance, min_gain=min_gain),
                    reference=ref["reference"])
    if generic:
        from iranker.evaluate.generic import generic_reasons

        general = json.loads((Path(generic) / "generic.json").read_text())
        more = generic_reasons(general, generic_tolerance)
        decision["generic"] = {"tolerance": generic_tolerance, "tasks": {
            name: {"metric": t["primary_metric"], "n": t["n"], **t["comparison"]}
            for name, t in general["tasks"].items()}}
        decision["promote"] = decision["promote"] and not more
        decision["reasons"] += more
    saved = read_settings(model)
    used = (metrics.get("ranking_settings") or {}).get("trained")
    if saved is not None and used is not None:
        differ = {k: (used[k], getattr(saved, k)) for k in used if used[k] != getattr(saved, k)}
        if differ:  # judged in a setting other than the one it was trained in, and would be served in
            decision["promote"] = False
            decision["reasons"].append("evaluated under other ranking settings than the model's own: " + ", ".join(
                f"{k} {a!r} (trained with {b!r})" for k, (a, b) in differ.items()))
    card = {**card, "ranking": saved.model_dump() if saved else None}
    decision["decided_at"] = now()
    result: dict[str, Any] = {"promoted": decision["promote"], "reference": ref["reference"],
                              "reasons": decision["reasons"], "registry": reg.url}
    if decision["promote"]:
        version = reg.add(model, {**card, "decision": decision}, eval_dir=ev)
        pointer = reg.set_production(version, {k: decision[k] for k in ("reference", "pooled", "reasons")})
        manifest = render_manifest(pointer, resolve_path(manifests_dir))
        result.update(version=version, model_uri=pointer["model_uri"], manifest=str(manifest))
        _say(f"promoted {version} to production (was {ref['reference']}); manifest change: {manifest}")
    else:
        _say("rejected: " + "; ".join(decision["reasons"]))
        result["production"] = (prod or {}).get("version")
    reg.record({**{k: v for k, v in decision.items() if k != "checks"}, "version": result.get("version"),
                "card": card})
    text = "# Promotion decision\n\n" + decision_markdown(decision) + "\n"
    if decision["promote"]:
        text += f"\nProduction is now **{result['version']}** (`{result['model_uri']}`); commit " \
                f"`{result['manifest']}` to deploy it.\n"
    else:
        text += f"\nProduction stays **{result['production'] or 'unset (base model)'}**; manifests unchanged.\n"
    if report:
        Path(report).write_text(text)
    result["decision"] = decision
    return result
