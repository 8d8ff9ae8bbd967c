"""The Kubeflow pipeline: `iranker pipeline compile|run|ingest|submit`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from iranker.cli.common import (
    _die,
    _say,
    _yaml_pairs,
)


def _pipeline_module():
    from iranker.pipeline import ROOT

    if not (ROOT / "pipelines" / "iranker_pipeline.py").exists():
        _die(f"{ROOT / 'pipelines'}: the pipeline definition is not there (it ships with the repository and the "
             "image, not the wheel)")
    sys.path.insert(0, str(ROOT))
    import pipelines.iranker_pipeline as module

    return module


def _pipeline_params(pairs: list[str]) -> dict:
    return _yaml_pairs(pairs, "--param", "NAME=VALUE (a pipeline parameter)")


def cmd_pipeline_compile(args) -> None:
    pl = _pipeline_module()
    gpu = None if args.no_gpu else {**pl.GPU, "limit": args.gpus}
    path = pl.compile_pipeline(args.out or pl.COMPILED, gpu=gpu, k8s=None if args.out else pl.K8S_RESOURCES)
    _say(f"compiled {path} (train step: {'CPU' if gpu is None else f'{args.gpus} x ' + pl.GPU['accelerator']})")
    print(json.dumps({"pipeline": str(path)}))


def cmd_pipeline_run(args) -> None:
    import inspect
    import time

    from iranker.evaluate.report import summary_table
    from iranker.pipeline import ROOT

    if not args.local:
        _die("pipeline run: only --local is supported here; use `iranker pipeline submit --host URL` for a cluster")
    pl = _pipeline_module()
    known = inspect.signature(pl.build_pipeline(gpu=None).pipeline_func).parameters
    params = {"profile": args.profile, "registry": args.registry, "dvc": not args.no_dvc,
              **_pipeline_params(args.param)}
    unknown = [k for k in params if k not in known]
    if unknown:
        _die(f"--param {unknown[0]}: not a pipeline parameter; known: {', '.join(known)}")
    root = Path(args.root)
    log = root / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    _say(f"running the pipeline locally (kfp.local, subprocess runner), profile {params['profile']}; full log: {log}")
    t0 = time.perf_counter()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)  # the real stderr: fds 1 and 2 go to the log meanwhile
    try:
        run = pl.run_local(root, log_file=log, echo=lambda line: terminal.write(f"  {line}\n"), **params)
    except RuntimeError as e:  # kfp.local raises it naming the failed task
        _die(f"pipeline failed: {str(e).splitlines()[0]} (the step's error is above; full log: {log})", 1)
    metrics = json.loads((run / "evaluate" / "evaluation" / "metrics.json").read_text())
    decision = (run / "promote" / "decision").read_text()
    print("\n" + summary_table(metrics) + "\n\n" + decision, file=sys.stderr)
    report = run / "evaluate" / "evaluation" / "report.md"
    _say(f"pipeline finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    promoted = pl.task_outputs(run, "promote").get("Output")
    print(json.dumps({"run": str(run), "log": str(log), "promoted": promoted,
                      "report": str(report),
                      "decision": str(run / "promote" / "decision"),
                      "registry": str(args.registry if "://" in args.registry else ROOT / args.registry)}, indent=1))


def cmd_pipeline_ingest(args) -> None:
    pl = _pipeline_module()
    params = {"dvc": not args.no_dvc, **_pipeline_params(args.param)}
    try:
        steps = pl.ingest_only(**params)
    except ValueError as e:
        _die(f"--param {e}")
    print(json.dumps({k: {f: v[f] for f in ("dataset", "counts", "dvc", "data_version")} for k, v in steps.items()},
                     indent=1))
    # data.dvc versions all of data/: other folders there (benchmark data, own ingests) make a version a fresh
    # clone's `make demo` does not produce
    written = Path(params.get("data_dir") or pl.default_params()["data_dir"])
    if params["dvc"] and written.parent.is_dir() and Path(f"{written.parent}.dvc").exists():
        extra = sorted(p.name for p in written.parent.iterdir() if p.name != written.name and not p.name.startswith("."))
        if extra:
            _say(f"note: {written.parent}.dvc versions all of {written.parent}/, which here also holds "
                 f"{', '.join(extra)}: the version written is not the one a fresh clone's `make demo` makes. To "
                 f"refresh the committed {written.parent}.dvc, run this in a checkout whose {written.parent}/ holds "
                 f"only {written.name}/ (e.g. a fresh clone).")


def cmd_pipeline_submit(args) -> None:
    pl = _pipeline_module()
    package = Path(args.package) if args.package else pl.COMPILED
    if not package.exists():
        _die(f"--package {package}: no such file; run `iranker pipeline compile` first")
    with contextlib.redirect_stdout(sys.stderr):  # kfp.Client prints links on stdout; stdout carries the JSON
        result = pl.submit(args.host, experiment=args.experiment, params=_pipeline_params(args.param),
                           version=args.version, package=package, namespace=args.namespace,
                           existing_token=os.environ.get("KFP_TOKEN"), cron=args.cron)
    _say(f"{'recurring run created' if args.cron else 'run started'}: {result['url']}")
    print(json.dumps(result, indent=1))


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
    pipe = sub.add_parser("pipeline", help="the Kubeflow pipeline: compile, run locally, submit to a cluster") \
        .add_subparsers(dest="pipeline_command", required=True)
    pc = pipe.add_parser("compile", help="write the pipeline YAML (upload it in the Kubeflow UI)")
    pc.add_argument("--out", default=None, help="YAML path (default: the committed pipelines/iranker_pipeline.yaml)")
    pc.add_argument("--no-gpu", action="store_true", help="train step on CPU (no accelerator, node selector, "
                    "toleration)")
    pc.add_argument("--gpus", type=int, default=1, help="GPUs for the train step (default 1)")
    pc.set_defaults(func=cmd_pipeline_compile)
    pr = pipe.add_parser("run", help="run the real pipeline on this machine with kfp.local",
                         epilog="example: iranker pipeline run --local --profile smoke --param eval_limit=20")
    pr.add_argument("--local", action="store_true", help="run with kfp.local's subprocess runner (required)")
    pr.add_argument("--profile", default="demo", help="training profile: smoke, demo (default), cpu, gpu-3b or a YAML")
    pr.add_argument("--registry", default="registry", help="model registry folder or URL (default registry/)")
    pr.add_argument("--root", default="runs/kfp", help="kfp.local pipeline root: task outputs and logs (default "
                    "runs/kfp)")
    pr.add_argument("--no-dvc", action="store_true", help="do not DVC-track the ingested data")
    pr.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="any pipeline parameter (YAML value), e.g. --param eval_limit=20 --param "
                         "'train_overrides={steps: 4}'")
    pr.set_defaults(func=cmd_pipeline_run)
    pi = pipe.add_parser("ingest", help="run only the pipeline's three ingest steps, as a run with the same "
                         "parameters does (writes the data version `make demo` writes; updates data.dvc)",
                         epilog="example: iranker pipeline ingest   (then commit data.dvc)")
    pi.add_argument("--no-dvc", action="store_true", help="do not DVC-track the ingested data")
    pi.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a pipeline parameter (YAML value), e.g. --param data_dir=data/other")
    pi.set_defaults(func=cmd_pipeline_ingest)
    ps = pipe.add_parser("submit", help="upload the compiled pipeline as a new version and start a run (kfp.Client)",
                         epilog="example: iranker pipeline submit --host http://localhost:8080 --param profile=cpu")
    ps.add_argument("--host", required=True, help="Kubeflow Pipelines API, e.g. http://localhost:8080 "
                    "(kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow); token from $KFP_TOKEN")
    ps.add_argument("--experiment", default="iranker", help="experiment name, created if missing (default iranker)")
    ps.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    ps.add_argument("--version", default=None, help="pipeline version name (default iranker-VERSION-TIMESTAMP)")
    ps.add_argument("--package", default=None, help="compiled YAML (default pipelines/iranker_pipeline.yaml)")
    ps.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    ps.add_argument("--cron", default=None, help="create a recurring run instead, e.g. '0 0 3 * * *' (daily 03:00; "
                    "six fields, seconds first)")
    ps.set_defaults(func=cmd_pipeline_submit)
