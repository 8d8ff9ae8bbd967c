"""Training: `iranker train`, `export-verl`, `thoughts collect`."""

from __future__ import annotations

import json
import os

from iranker.cli.common import (
    _add_backend_args,
    _die,
    _open_model,
    _say,
    _yaml_pairs,
)


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


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
    train = sub.add_parser("train", help="train the ranker with PPO on elimination steps")
    train.add_argument("--config", required=True, help="profile YAML, e.g. configs/smoke.yaml")
    train.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, tb/, final/")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out (a run stopped before its first checkpoint starts over there)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set steps=10 or --set ppo.kl_coef=0.05")
    train.set_defaults(func=cmd_train)

    vx = sub.add_parser("export-verl", help="write a training profile's data and reward for verl (GPU clusters)")
    vx.add_argument("--config", required=True, help="profile YAML, e.g. configs/gpu-3b.yaml")
    vx.add_argument("--out", required=True, help="folder for train.parquet, val.parquet, verl-overrides.txt")
    vx.add_argument("--per-instance", type=int, default=4, help="sub-pools drawn per instance (default 4)")
    vx.add_argument("--mode", choices=["fast", "reasoning"], default=None, help="override the profile's mode")
    vx.set_defaults(func=cmd_export_verl)

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
