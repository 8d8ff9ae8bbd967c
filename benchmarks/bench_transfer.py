"""Zero-shot transfer (the IRanker paper's section 4.3 in our setting): trained on two scenarios, tested on the third.

For each target scenario, on its test sets and the same instances: the base model, the model trained on the OTHER
two scenarios (the target held out of training and of validation: `train_scenarios`), and the model trained on all
three, each with the paired 95% interval of its difference from the base. Every run gets the same profile, the same
number of optimizer updates and the same seed (the same CPU budget in updates; the seconds each took are recorded),
so the only difference between them is which scenarios they saw.

1. Data: `bench_train_quality.py`'s (ingested under --data-root when missing), trained on its TRAIN_DATA.
2. Runs under --runs-dir: `all` and `without-SCENARIO` for each target; a finished run is reused, a killed one
   resumed (`iranker.pipeline.train_step`'s rule: the folder is keyed by the settings).
3. Evaluation (`iranker.evaluate.harness.evaluate`): `all` on every test set, `without-T` on T's; in the first
   stage's order (--orders to add shuffled), at most --limit instances per dataset.

    python benchmarks/bench_transfer.py [--config configs/cpu.yaml] [--set steps=400] [--limit 40]
    python benchmarks/bench_transfer.py --smoke --out /tmp/transfer.json     # the tiny profile on the samples

Writes benchmarks/results/bench_transfer.json (--out): the runs, the table, the machine, and `pending` (the targets
whose held-out run is not trained and evaluated yet: the file is rewritten after each, their zero-shot cells empty).
Log every run in benchmarks/RESULTS.md.

A benchmark whose run folders are gone (a new machine) goes on from its result file: `--recorded` takes `all` and each
held-out run already in --out from there (its settings must be the ones given now) and trains only what is pending:

    python benchmarks/bench_transfer.py --set ... --limit 40 --recorded

"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from iranker.devices import cpu_info
from iranker.evaluate.harness import evaluate, load_eval_data
from iranker.schema import SCENARIOS
from iranker.train import load_config
from iranker.train.loop import run_training
from iranker.train.modeling import base_model_path


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# the test sets of each scenario (bench_train_quality's folders)
TEST_SETS = {"recommendation": ("ml-100k", "games-6k"), "routing": ("routerbench",),
             "passage": ("dl19", "noveleval")}


def train(name: str, config: str, overrides: dict, runs: Path) -> tuple[Path, dict]:
    cfg = load_config(config, overrides)
    run = runs / name
    final = run / "final"
    started = time.perf_counter()
    if not (final / "config.json").exists():
        resume = (run / "checkpoints" / "latest").exists()  # a folder without one starts over (run_training)
        say(f"training {name} on {cfg.train_scenarios or 'every scenario'} ({cfg.steps} updates)"
            + (" - resuming" if resume else ""))
        final = run_training(cfg, run, resume=run.is_dir() and any(run.iterdir()), progress=True)
    else:
        say(f"reusing the finished run {run}")
    record = json.loads((Path(final) / "iranker-train.json").read_text())
    # the updates' own seconds, from the run's log: the same whether this call trained, resumed or reused the run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return Path(final), {"train_scenarios": cfg.train_scenarios or list(SCENARIOS), "updates": record["steps"],
                         "seconds_in_updates": round(sum(r["seconds"] for r in rows), 1),
                         "seconds_this_call": round(time.perf_counter() - started, 1), "run": str(run),
                         "machine": cpu_info()}


def read_recorded(out: Path, result: dict) -> dict:
    """The result file a benchmark goes on from (--recorded): its settings must be this call's, and it must hold
    the run `all` with a row per held-out test set."""
    if not out.is_file():
        raise SystemExit(f"--recorded: {out} does not exist; run without --recorded to train every run")
    recorded = json.loads(out.read_text())
    for key in ("config", "overrides", "limit", "orders"):
        same = (Path(recorded.get(key) or "").name == Path(result[key]).name if key == "config"  # any checkout's
                else recorded.get(key) == result[key])
        if not same:
            raise SystemExit(f"--recorded: {out} was written with {key}={recorded.get(key)!r}, this call has "
                             f"{result[key]!r}; give the same settings or run without --recorded")
    if "all" not in recorded.get("runs", {}) or not recorded.get("table"):
        raise SystemExit(f"--recorded: {out} holds no run `all` with its table rows")
    return recorded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override (YAML value)")
    ap.add_argument("--data-root", default=str(ROOT / "data" / "bench"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "transfer"))
    ap.add_argument("--limit", type=int, default=40, help="test instances per dataset (seeded)")
    ap.add_argument("--orders", default="first-stage", help="listing orders, comma-separated (first-stage,shuffled)")
    ap.add_argument("--smoke", action="store_true", help="the smoke profile (tiny random model) on the built-in "
                                                         "samples: checks the benchmark itself in a minute")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_transfer.json"))
    ap.add_argument("--recorded", action="store_true",
                    help="take the runs and rows already in --out (same settings) where their run folder is gone, "
                         "and train and evaluate only the pending targets")
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    import yaml

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.smoke:
        args.config = str(ROOT / "configs" / "smoke.yaml")
        train_data, test_sets = ["samples"], {s: ("samples",) for s in SCENARIOS}
    else:
        from bench_train_quality import TRAIN_DATA, ensure_data

        folders = ensure_data(Path(args.shared), Path(args.data_root))
        train_data = [str(folders[k].resolve()) for k in TRAIN_DATA]
        test_sets = {s: tuple(str(folders[k]) for k in names) for s, names in TEST_SETS.items()}
    orders = tuple(o.strip() for o in args.orders.split(",") if o.strip())
    runs = Path(args.runs_dir)
    base_cfg = load_config(args.config, {**overrides, "data": train_data})
    # which scenarios have training instances: a scenario with none cannot be held out (the samples have no
    # passage training split)
    from iranker.train.pools import load_training_instances

    trainable = sorted({i.scenario for i in load_training_instances(base_cfg)})
    targets = [s for s in SCENARIOS if s in trainable and len(trainable) > 1]

    result: dict = {"machine": cpu_info(), "config": args.config, "overrides": overrides, "limit": args.limit,
                    "orders": list(orders), "budget": "the same profile, updates and seed for every run",
                    "runs": {}, "table": []}
    out = Path(args.out)
    recorded = read_recorded(out, result) if args.recorded else None
    evaluated: dict[str, dict] = {}
    rows: dict[tuple, dict] = {}

    def scores(name: str, model: Path, sources: tuple[str, ...]) -> dict:
        """The run's evaluation on the test sets; one finished with the same model, sets, limit and orders is
        reused (a resumed benchmark does not evaluate a finished run again)."""
        out = runs / name / "evaluation"
        key = {"model": str(model), "sources": list(dict.fromkeys(sources)), "limit": args.limit,
               "orders": list(orders)}
        done = out / "bench-transfer-key.json"
        if done.is_file() and (out / "metrics.json").is_file() and json.loads(done.read_text()) == key:
            say(f"reusing the evaluation of {name} in {out}")
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            data = load_eval_data(key["sources"], split="test", limit=args.limit, orders=orders)
            metrics = evaluate(data, out, model=str(model), base=base_model_path(base_cfg, runs / name),
                               direct=False, baselines=[], progress=False)
            done.write_text(json.dumps(key))
        return {(r["dataset"], r["scenario"]): r for r in metrics["results"]}

    if recorded and not (runs / "all" / "final" / "config.json").exists():
        say(f"taking the run `all` and its evaluation from {out}")
        result["runs"]["all"] = recorded["runs"]["all"]
        rows = {(r["dataset"], r["target"]): r for r in recorded["table"]}
    else:
        final_all, result["runs"]["all"] = train("all", args.config, {**overrides, "data": train_data}, runs)
        result["runs"]["all"]["train_scenarios"] = trainable
        # one row per held-out test set, from the start: the zero-shot columns stay empty (None) until that target's
        # run is trained and evaluated, and the file is written after each, so a long benchmark shows where it stands
        for (dataset, scenario), full in scores("all", final_all,
                                                tuple(d for s in targets for d in test_sets[s])).items():
            if scenario not in targets:
                continue
            m = full["primary_metric"]
            rows[(dataset, scenario)] = {
                "target": scenario, "dataset": dataset, "metric": m, "n": full["n_instances"],
                "trained_on_zero_shot": [s for s in trainable if s != scenario], "domain_zero_shot": None,
                "base": full["baselines"]["base (iterative)"][m],
                "random": full["baselines"]["random (expected)"][m],
                "zero_shot": None, "all": full["metrics"][m], "zero_shot_minus_base": None,
                "all_minus_base": {k: full["comparison"][m][k] for k in ("diff", "low", "high", "p_value")}}
    result["table"] = list(rows.values())
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(pending: list[str]) -> None:
        result["pending"] = pending
        out.write_text(json.dumps(result, indent=1) + "\n")

    for i, target in enumerate(targets):
        write(targets[i:])
        others = [s for s in trainable if s != target]
        name = f"without-{target}"
        if (recorded and name in recorded["runs"] and target not in recorded.get("pending", [])
                and not (runs / name / "final" / "config.json").exists()):
            say(f"taking the run {name} and its evaluation from {out}")
            result["runs"][name] = recorded["runs"][name]
            continue
        final, result["runs"][name] = train(name, args.config, {**overrides, "data": train_data,
                                                                "train_scenarios": others}, runs)
        evaluated[name] = scores(name, final, test_sets[target])
        for (dataset, scenario), zero in evaluated[name].items():
            if scenario != target:
                continue
            row, m = rows[(dataset, scenario)], zero["primary_metric"]
            row.update(domain_zero_shot=zero["domain"], zero_shot=zero["metrics"][m],
                       zero_shot_minus_base={k: zero["comparison"][m][k] for k in ("diff", "low", "high", "p_value")})
            # the base model ranks greedily, so the held-out run's evaluation of it should repeat the all run's;
            # the interval is paired within one evaluation, and a base score that moved is kept beside it
            base = zero["baselines"]["base (iterative)"][m]
            if abs(base - row["base"]) > 1e-9:
                row["base_in_all_run"] = row["base"]
            row["base"] = base
            say(f"{target} / {dataset}: base {row['base']:.3f}, zero-shot {row['zero_shot']:.3f}, "
                f"all {row['all']:.3f}")
    write([])
    print(json.dumps(result["table"], indent=1))


if __name__ == "__main__":
    main()
