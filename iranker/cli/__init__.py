"""The `iranker` command, one module per command group. Machine-readable results go to stdout as JSON; progress
and tables go to stderr."""

from __future__ import annotations

import argparse
import sys

from iranker.cli import data, evaluate, features, model, pipeline, serve, train
from iranker.cli.common import _die, _yaml_pairs
from iranker.logs import setup

__all__ = ["_yaml_pairs", "build_parser", "main"]  # _yaml_pairs: benchmarks read --set pairs as the CLI does

GROUPS = (model, data, train, evaluate, pipeline, serve, features)


def build_parser() -> argparse.ArgumentParser:
    from iranker import __version__

    parser = argparse.ArgumentParser(prog="iranker", description="One LLM ranking model for recommendation, "
                                     "LLM routing and passage re-ranking, by iterative elimination.")
    parser.add_argument("--version", action="version", version=f"iranker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["evaluate", "generic"]:  # a command of its own beside `iranker evaluate --data ...`
        argv = ["evaluate-generic", *argv[2:]]
    args = build_parser().parse_args(argv)
    setup()  # the library's progress lines and warnings, on stderr
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        _die(str(e), 1)
    except OSError as e:  # e.g. a model id the hub cannot be reached for, with nothing in the local cache
        _die(str(e).splitlines()[0] if str(e) else type(e).__name__, 1)
