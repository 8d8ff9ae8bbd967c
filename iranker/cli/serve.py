"""Serving and its feedback loop: `iranker serve`, `collect`, `replay`."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from iranker.cli.common import (
    _add_device_args,
    _add_template_args,
    _backend_options,
    _die,
    _say,
    _secret,
    _store_die,
)


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

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, where serving/ lives
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, where serving/ lives
    from serving.collector import Store, run

    token = _secret(args.token_env, "--token-env")
    try:
        known = len(Store(args.out).known)
    except OSError as e:
        _die(f"--out {args.out}: {e}")
    _say(f"collecting CloudEvents on port {args.port} into {args.out} ({known} stored); auth: "
         f"{'bearer token' if token else 'off'}")
    run(args.out, args.port, args.host, token, args.max_body_bytes)


def cmd_replay(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, where serving/ lives
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


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
    sv = sub.add_parser("serve", help="the KServe ranking service (v1 and v2 protocols, Prometheus /metrics)",
                        epilog="example: curl -s localhost:8080/v1/models/iranker:predict -d "
                               "'{\"instances\": [REQUEST]}' (see `iranker rank --help` for a RankRequest)")
    sv.add_argument("--model", default=None, help="model folder, alias, shipped model's name (`iranker model list`) "
                    "or hub id (default: the registry's production model, else the embedded one)")
    sv.add_argument("--registry", default=os.environ.get("IRANKER_REGISTRY", "registry"),
                    help="model registry folder or URL (default registry/ or $IRANKER_REGISTRY)")
    sv.add_argument("--name", default="iranker", help="KServe model name (default iranker)")
    sv.add_argument("--http-port", type=int, default=8080, help="port of the HTTP server (default 8080)")
    sv.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"],
                    help="in process (transformers, vllm) or a remote OpenAI-compatible predictor (openai); default "
                    "transformers")
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
    sv.add_argument("--deadline", type=float, default=60.0, help="per-request deadline in seconds, 504 after it (default 60)")
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
                    "router over the LLMs it lists (docs: The LLM router)")
    sv.add_argument("--log-url", default=None, help="post every ranking, rerank and routed call to this URL as a "
                    "pair of CloudEvents in KServe's inference-logger format (e.g. `iranker collect`'s); off the "
                    "request path, spooled to disk while the sink is down (docs: The feedback loop)")
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
                        "--log-url) and store each exactly once, date-partitioned (docs: The feedback loop)")
    co.add_argument("--out", required=True, help="the store's folder (events/date=YYYY-MM-DD/events.jsonl)")
    co.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    co.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: every interface)")
    co.add_argument("--token-env", default=None, help="require this environment variable's value as a bearer token")
    co.add_argument("--max-body-bytes", type=int, default=8 << 20, help="larger events are refused with 413 (default 8 MiB)")
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
