"""The iranker pipeline: ingest (DVC) -> validate (Great Expectations) -> features (Feast) -> train (PPO) ->
evaluate (ranking; general ability, optional) -> promote. Compile with `iranker pipeline compile` (writes
pipelines/iranker_pipeline.yaml, the file to upload in the Kubeflow UI); run locally with `iranker pipeline run
--local`; submit with `iranker pipeline submit`.
"""


import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from kfp import dsl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _hide_dockerfiles_folder() -> None:
    """The repository's docker/ folder (Dockerfiles) is importable as a namespace package `docker` whenever the
    repository root is on sys.path; kfp.local would take it for the Docker SDK and fail. When the SDK is not
    installed, make `import docker` fail as it should."""
    import importlib.util

    spec = importlib.util.find_spec("docker") if "docker" not in sys.modules else None
    if spec is not None and spec.origin in (None, "namespace") and not any(
            (Path(p) / "__init__.py").exists() for p in (spec.submodule_search_locations or [])):
        sys.modules["docker"] = None  # type: ignore[assignment]


_hide_dockerfiles_folder()

from components.steps import (
    build_features,
    evaluate,
    evaluate_generic,
    ingest,
    ingest_feedback,
    promote,
    train,
    validate,
)

NAME = "iranker"
DESCRIPTION = ("Train and promote the iranker model (one LLM ranker for recommendation, LLM routing and passage "
               "re-ranking by iterative elimination): ingest with DVC, validate with Great Expectations, build Feast "
               "features, train with PPO, evaluate against production and simple baselines, promote through the "
               "quality gate.")

# Where the train step runs on a cluster (compile-time settings; `iranker pipeline compile --help`).
GPU = {"accelerator": "nvidia.com/gpu", "limit": 1, "node_selector": {"nvidia.com/gpu.present": "true"},
       "toleration": {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}}


def build_pipeline(gpu: dict | None = GPU):
    """The pipeline function; `gpu=None` leaves the train step on CPU (local runs, CPU-only clusters)."""

    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    def iranker_pipeline(
        recommendation_source: str = "recbole",
        recommendation_path: str = "samples/recbole",
        recommendation_params: dict = {"split": "train:0.5,test:0.5"},  # noqa: B006 - KFP parameters are literals
        routing_source: str = "routerbench",
        routing_path: str = "samples/routerbench",
        routing_params: dict = {},  # noqa: B006
        passage_source: str = "trec-dl",
        passage_path: str = "samples/trec-dl",
        passage_params: dict = {},  # noqa: B006
        feedback_path: str = "",
        feedback_params: dict = {},  # noqa: B006
        data_dir: str = "data/pipeline",
        dvc: bool = True,
        feature_repo: str = "feature_repo",
        profile: str = "gpu-3b",
        train_overrides: dict = {},  # noqa: B006
        templates_k: int = 0,
        runs_dir: str = "runs/pipeline",
        eval_limit: int = 0,
        baselines: list = ["first-stage", "bm25", "minilm", "popularity",  # noqa: B006
                           "best-average", "nearest-neighbour"],
        registry: str = "s3://iranker/registry",
        manifests_dir: str = "k8s/production",
        tolerance: float = 0.02,
        min_gain: float = 0.0,
        generic_tasks: str = "",
        generic_limit: int = 50,
        generic_data: str = "",
        generic_tolerance: float = 0.02,
    ):
        """Train, evaluate and promote the iranker model.

        Args:
            recommendation_source: Format of the recommendation data (recbole, llmrank or instances).
            recommendation_path: Recommendation data file or folder, relative to the project root in the image.
            recommendation_params: Ingest parameters for the recommendation data, e.g. {"negative_sampling":
                "popularity"}; the default gives the built-in samples' 16 users half for testing.
            routing_source: Format of the routing data (routerbench or instances).
            routing_path: Routing data file or folder (RouterBench CSVs).
            routing_params: Ingest parameters for the routing data.
            passage_source: Format of the passage data (trec-dl or instances).
            passage_path: Passage data file or folder (first-stage run with texts and TREC qrels).
            passage_params: Ingest parameters for the passage data, e.g. {"dataset": "dl19-bm25-top20"}.
            feedback_path: A collector's store of served calls and outcomes (`iranker collect --out DIR`), trained on
                beside the public data, its latest users and queries held out for the gate; empty for none.
            feedback_params: Ingest parameters for the feedback, e.g. {"holdout": 0.2}.
            data_dir: Folder of the DVC-tracked data the ingest steps write (one sub-folder per scenario).
            dvc: Track the data with DVC and push it to the default remote.
            feature_repo: Feast repository the features step applies and materializes.
            profile: Training profile: smoke, demo, cpu, gpu-3b, or a YAML file.
            train_overrides: Settings that override the profile, e.g. {"steps": 200, "lr_actor": 1e-6}.
            templates_k: Thought templates (IRanker-COT) the trained model is shown per request from its own store,
                which reasoning-mode training keeps (train_overrides {"mode": "reasoning"}): saved with the model's
                ranking settings, so the evaluate step, the gate and the server all show them; 0 for none.
            runs_dir: Folder for training runs (a re-run resumes from the last checkpoint).
            eval_limit: At most this many test instances per dataset (0 for all).
            baselines: Simple baselines scored on the same instances.
            registry: Model registry: a folder or an object-store URL (s3://...).
            manifests_dir: Folder where a promotion renders the KServe manifest change (GitOps).
            tolerance: The candidate may be at most this much worse than production on any scenario
                (lower end of the paired 95% interval).
            min_gain: The pooled primary-metric gain over production must have its lower interval end above this.
            generic_tasks: General-ability tasks (lm-evaluation-harness: "gsm8k", "humaneval", comma-separated)
                the candidate is checked on against its base model; empty for none. HumanEval runs the code the
                model writes, inside the step's container.
            generic_limit: At most this many documents per general-ability task (0 for all).
            generic_data: Folder of the task files (empty: $IRANKER_GENERIC_DATA, else ../shared/data/generic).
            generic_tolerance: A general-ability task may drop at most this much below the base (lower end of the
                paired 95% interval) for the candidate to be promoted.
        """
        tasks = {}
        for scenario, source, path, params in (
                ("recommendation", recommendation_source, recommendation_path, recommendation_params),
                ("routing", routing_source, routing_path, routing_params),
                ("passage", passage_source, passage_path, passage_params)):
            ing = ingest(source=source, path=path, params=params, data_dir=data_dir, name=scenario, dvc=dvc)
            ing.set_display_name(f"ingest {scenario}").set_caching_options(False)  # reads outside data
            val = validate(dataset=ing.outputs["dataset"]).set_display_name(f"validate {scenario}")
            tasks[scenario] = (ing, val)
        rec, routing, passage = (tasks[s][0].outputs["dataset"] for s in ("recommendation", "routing", "passage"))
        fb = ingest_feedback(path=feedback_path, params=feedback_params, data_dir=data_dir, dvc=dvc)
        fb.set_display_name("ingest feedback").set_caching_options(False)  # the store grows between runs

        feats = build_features(dataset=rec, routing=routing, feature_repo=feature_repo).set_display_name(
            "build features (Feast)")
        feats.after(tasks["recommendation"][1])

        tr = train(recommendation=rec, routing=routing, passage=passage, feedback=fb.outputs["dataset"],
                   recommendation_version=tasks["recommendation"][1].outputs["Output"],
                   routing_version=tasks["routing"][1].outputs["Output"],
                   passage_version=tasks["passage"][1].outputs["Output"], feedback_version=fb.outputs["Output"],
                   profile=profile, overrides=train_overrides, runs_dir=runs_dir,
                   templates_k=templates_k).set_display_name("train (PPO)")
        if gpu:
            from kfp import kubernetes

            tr.set_accelerator_type(gpu["accelerator"]).set_accelerator_limit(gpu["limit"])
            for key, value in gpu.get("node_selector", {}).items():
                kubernetes.add_node_selector(tr, label_key=key, label_value=value)
            if gpu.get("toleration"):
                kubernetes.add_toleration(tr, **gpu["toleration"])
        tr.set_memory_request("8G").set_cpu_request("2")

        ev = evaluate(recommendation=rec, routing=routing, passage=passage, feedback=fb.outputs["dataset"],
                      model=tr.outputs["model"],
                      registry=registry, limit=eval_limit, baselines=baselines).set_display_name("evaluate")
        ev.set_caching_options(False)  # the reference (production) lives outside the pipeline's inputs

        gen = evaluate_generic(model=tr.outputs["model"], tasks=generic_tasks, limit=generic_limit,
                               data_dir=generic_data).set_display_name("evaluate general ability")

        pr = promote(model=tr.outputs["model"], evaluation=ev.outputs["evaluation"], generic=gen.outputs["generic"],
                     registry=registry, manifests_dir=manifests_dir, tolerance=tolerance, min_gain=min_gain,
                     generic_tolerance=generic_tolerance)
        pr.set_display_name("promote (quality gate)").set_caching_options(False)

    return iranker_pipeline


iranker_pipeline = build_pipeline()
SCENARIOS = ("recommendation", "routing", "passage")


def default_params() -> dict:
    """The pipeline's parameters and their defaults (what a run without --param uses)."""
    import inspect

    sig = inspect.signature(build_pipeline(gpu=None).pipeline_func)
    return {k: p.default for k, p in sig.parameters.items()}


def ingest_only(data_dir: str | None = None, artifacts: str | Path | None = None, **params) -> dict[str, dict]:
    """Run the pipeline's three ingest steps outside kfp, exactly as a pipeline run with these parameters (its
    defaults where not given) runs them - the same step function, sources, parameters and data folder - and return
    each step's artifact metadata. `make demo` and `iranker pipeline run --local` ingest this way; so
    `iranker pipeline ingest` (and `make data-version`) rewrites the data version they produce, and the test that
    guards data.dvc compares against it."""
    import tempfile

    from iranker.pipeline import ingest_step

    unknown = [k for k in params if k not in default_params()]
    if unknown:
        raise ValueError(f"{unknown[0]}: not a pipeline parameter; known: {', '.join(default_params())}")
    p = {**default_params(), **params}
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="iranker-ingest-") as tmp:
        where = Path(artifacts) if artifacts else Path(tmp)
        for scenario in SCENARIOS:
            out[scenario] = ingest_step(p[f"{scenario}_source"], p[f"{scenario}_path"], p[f"{scenario}_params"],
                                        data_dir or p["data_dir"], scenario, str(where / scenario), dvc=p["dvc"])
    return out


COMPILED = Path(__file__).with_suffix(".yaml")


K8S_RESOURCES = Path(__file__).resolve().parent.parent / "k8s" / "kfp" / "pipeline.yaml"


def compile_pipeline(out: str | Path = COMPILED, gpu: dict | None = GPU, k8s: str | Path | None = None) -> Path:
    """Write the pipeline YAML (upload it in the Kubeflow UI, or `iranker pipeline submit`); with `k8s`, also the
    Pipeline and PipelineVersion resources that register it on a Kubeflow Pipelines install in Kubernetes-native
    mode (k8s/kfp/pipeline.yaml)."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(gpu), str(out))
    if k8s is not None:
        write_k8s_resources(Path(out), Path(k8s))
    return Path(out)


def write_k8s_resources(compiled: Path, target: Path) -> Path:
    """Pipeline + PipelineVersion custom resources (pipelines.kubeflow.org/v2beta1) holding the compiled spec."""
    import yaml

    from iranker import __version__

    docs = list(yaml.safe_load_all(compiled.read_text()))
    version = f"{NAME}-{__version__.replace('.', '-')}"
    resources = [
        {"apiVersion": "pipelines.kubeflow.org/v2beta1", "kind": "Pipeline",
         "metadata": {"name": NAME}, "spec": {"description": DESCRIPTION}},
        {"apiVersion": "pipelines.kubeflow.org/v2beta1", "kind": "PipelineVersion",
         "metadata": {"name": version},
         "spec": {"pipelineName": NAME, "displayName": version, "description": DESCRIPTION,
                  "pipelineSpec": docs[0], **({"platformSpec": docs[1]} if len(docs) > 1 else {})}},
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# Generated by `iranker pipeline compile` from pipelines/iranker_pipeline.yaml; do not edit.\n"
                      "# Registers the pipeline on Kubeflow Pipelines in Kubernetes-native mode "
                      "(kubectl apply -k k8s/kfp -n kubeflow).\n"
                      + yaml.safe_dump_all(resources, sort_keys=False, width=120))
    return target


def run_local(root: str | Path, log_file: str | Path | None = None, echo=None, **params) -> Path:
    """Run the pipeline with kfp.local's subprocess runner (the current Python environment) and return the run's
    output folder. With `log_file`, the runner's full output goes there and `echo` gets the lines worth showing
    (task starts and ends, iranker's progress, and the failing task's last lines). A failing step raises."""
    from kfp import local

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    try:
        if log_file is None:
            build_pipeline(gpu=None)(**params)
        else:
            with _captured(Path(log_file), echo or (lambda line: None)):
                build_pipeline(gpu=None)(**params)
    finally:
        new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before),
                     key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"kfp.local wrote no run folder under {root}")
    return new[-1]


def task_outputs(run: Path, task: str) -> dict:
    """The output parameters a task of a local run returned (kfp.local's executor_output.json)."""
    path = Path(run) / task / "executor_output.json"
    return json.loads(path.read_text()).get("parameterValues", {}) if path.exists() else {}


ANSI = re.compile(r"\x1b\[[0-9;]*m")
SHOWN = re.compile(r"Executing task|finished with status|\[iranker\]|^\s*training:|Error:|error:")


@contextlib.contextmanager
def _captured(log_file: Path, echo):
    """Send everything written to file descriptors 1 and 2 (this process and the step subprocesses) to `log_file`;
    pass the lines that matter to `echo`; on a failed task, echo that task's last lines."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump():
        task: list[str] = []
        last_progress = 0.0
        with open(read_fd, "rb", closefd=True) as pipe, open(log_file, "w") as log:
            for raw in pipe:
                for part in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                    line = ANSI.sub("", part).rstrip()
                    log.write(line + "\n")
                    if "Executing task" in line:
                        task = []
                    task.append(line)
                    if "finished with status FAILURE" in line:
                        echo("\n".join(task[-40:]))
                    elif SHOWN.search(line):
                        if line.lstrip().startswith("training:"):  # progress bar: at most every 5 s
                            if time.monotonic() - last_progress < 5:
                                continue
                            last_progress = time.monotonic()
                        echo(line.strip())
                log.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    streams = sys.stdout, sys.stderr  # kfp logs and relays step output through sys.stdout: point it at fd 1 too
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        thread.join(timeout=30)


def submit(host: str, experiment: str = "iranker", params: dict | None = None, version: str | None = None,
           package: str | Path = COMPILED, namespace: str | None = None, existing_token: str | None = None,
           cron: str | None = None) -> dict:
    """Upload the compiled pipeline (a new version of the pipeline named `iranker`) and start a run, or with `cron`
    (six fields, seconds first: "0 0 3 * * *" is daily at 03:00) a recurring run of that version."""
    import kfp

    from iranker import __version__

    client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
    pipeline_id = client.get_pipeline_id(NAME)
    version = version or f"{NAME}-{__version__}-{time.strftime('%Y%m%d-%H%M%S')}"
    if pipeline_id is None:
        uploaded = client.upload_pipeline(str(package), pipeline_name=NAME, description=DESCRIPTION)
        pipeline_id = uploaded.pipeline_id
        version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
    else:
        uploaded = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id)
        version_id = uploaded.pipeline_version_id
    exp = client.create_experiment(experiment, namespace=namespace)
    out = {"host": host, "pipeline_id": pipeline_id, "version_id": version_id, "experiment": experiment}
    if cron:
        job = client.create_recurring_run(experiment_id=exp.experiment_id, job_name=f"{NAME}-{version}-schedule",
                                          cron_expression=cron, params=params or {}, pipeline_id=pipeline_id,
                                          version_id=version_id, max_concurrency=1, no_catchup=True)
        return {**out, "recurring_run_id": job.recurring_run_id, "cron": cron,
                "url": f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}"}
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=f"{NAME}-{version}", params=params or {},
                              pipeline_id=pipeline_id, version_id=version_id)
    return {**out, "run_id": run.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


if __name__ == "__main__":
    print(compile_pipeline())
