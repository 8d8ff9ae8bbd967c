"""Evaluation: `iranker evaluate` and `iranker evaluate generic`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from iranker.cli.common import (
    _add_device_args,
    _add_template_args,
    _die,
    _say,
    _store_die,
)


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


def register(sub) -> None:
    """Add this group's commands to the `iranker` parser's subcommands."""
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
                    "docs: Evaluation, General ability, says why the others are not here)")
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
