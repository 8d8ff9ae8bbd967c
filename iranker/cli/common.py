"""What every command group shares: model and backend options, errors, progress lines."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn


def _add_backend_args(p: argparse.ArgumentParser, ranking: bool = True) -> None:
    """The model and where it runs; with `ranking`, also how requests are ranked (layout, templates, reasoning)."""
    p.add_argument("--model", default=None,
                   help="model: 'smollm2-135m' (embedded default), a shipped model's name (`iranker model list`), "
                        "a transformers folder, or a Hugging Face id")
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
                        "engine's dtype (auto: vLLM's choice); default auto")


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
    logging.getLogger("iranker.cli").info(msg)
