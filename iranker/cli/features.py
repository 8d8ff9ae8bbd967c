"""Feast user features: `iranker features apply|materialize|get`."""

from __future__ import annotations

import contextlib
import json
import sys

from iranker.cli.common import (
    _say,
)


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


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
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
