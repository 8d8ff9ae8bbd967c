"""Does PPO on the exclusion reward make the embedded model rank better? Base vs trained, same test instances.

1. Data: ingests (without DVC) whatever of these is missing under --data-root, from the public data in ../shared:
   MovieLens-100K (recbole, every user), Amazon Games-6k (llmrank), RouterBench (every training row), TREC DL 2019
   and 2021 top-100 under two first stages each (DL19: BM25 and TAS-B; DL21: BM25 and SPLADE++; each collection's
   queries split train 0.4, validation 0.2, test 0.4 over its query set, the same split under every first stage,
   so no test query is ever trained on), and for evaluation only: the DL19 and DL21 BM25 top-20 (whole lists as
   served, the same query split), MovieLens-100K with popularity-matched negatives (the same users and targets) and
   NovelEval (21 queries, all test). Training reads
   the top-100 lists in the windows serving ranks them in (`iranker.train.pools.serving_windows`).
2. Training: the `cpu` profile (configs/cpu.yaml: SmolLM2-135M + LoRA on the top layers, PPO in fast mode on the
   training splits of all three scenarios together) into --run; a finished run there is reused, a killed one resumed.
3. Selection (`iranker.train.select.select_served`): the run's kept checkpoints (and any --checkpoint) rank about
   --select-instances VALIDATION lists as served (up to the window), in both listing orders, scored with the test metrics, each
   with its standard error; the best is merged into --run/selected/final (--no-select: final/).
4. Evaluation (`iranker.evaluate.harness.evaluate`, the code behind `iranker evaluate`): on the held-out test
   splits, the trained model against the base model (iterative and direct), the random expectation and the simple
   baselines, with paired bootstrap intervals; the report and plots go to --report, with the run's per-update
   log and validation probe (metrics.jsonl, probe.jsonl) that render_results.py draws the training curves from.
5. Throughput: elimination steps per second of PPO (ours) and GRPO (TRL) on the same data and profile, a few
   updates each, one after the other.

The bar for shipping the trained model (`iranker.evaluate.bar`): on every test set and listing order it beats the
base model with the paired 95% interval above zero, is above the random expectation, and scores at least the first
stage it reranks (BM25 order, popularity, best average), with that paired interval reported. The JSON says, per
dataset, what was met (`goals`), what falls short (`shortfalls`) and whether the bar was (`bar_met`). Log every run
in benchmarks/RESULTS.md.

    python benchmarks/bench_train_quality.py [--run runs/cpu] [--limit 150] [--skip-top100]
    python benchmarks/bench_train_quality.py --smoke --run /tmp/q/run --report /tmp/q/report --out /tmp/q.json
        # the whole chain (train, served selection, evaluation, bar) with the tiny profile on the samples
    # split over two sessions (or machines): train, select and export; later, evaluate what was exported. The
    # second call writes the verdict into the adapter's card; the folder then ships as iranker/shipped/NAME.
    python benchmarks/bench_train_quality.py ... --export benchmarks/results/train_quality/NAME --no-evaluate
    python benchmarks/bench_train_quality.py ... --adapter benchmarks/results/train_quality/NAME
    # where the selection does not fit either: export every kept checkpoint; later, select among them and evaluate
    python benchmarks/bench_train_quality.py ... --export-candidates benchmarks/results/train_quality/candidates
    python benchmarks/bench_train_quality.py ... --candidates benchmarks/results/train_quality/candidates \
        --export benchmarks/results/train_quality/NAME
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iranker.devices import cpu_info
from iranker.evaluate.bar import bar_met, goals, shortfalls
from iranker.evaluate.harness import evaluate, load_eval_data
from iranker.models import materialize_adapter
from iranker.train import load_config
from iranker.train.config import TrainConfig
from iranker.train.loop import run_training
from iranker.train.modeling import base_model_path
from iranker.train.select import select_served


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# DL19 and DL21 queries: training, validation (checkpoint choice) and test, over each collection's query set
SPLIT_DL19 = "train:0.4,validation:0.2,test:0.4"
# what the model trains on (their training splits), all three scenarios together
TRAIN_DATA = ("ml-100k", "games-6k", "routerbench", "dl19-top100", "dl19-tasb-top100", "dl21-top100",
              "dl21-splade-top100")


def ensure_data(shared: Path, root: Path) -> dict[str, Path]:
    from iranker.ingest import ingest

    rec = shared / "recommendation"
    dl19, dl21 = shared / "passage", shared / "passage-dl21"
    specs = {
        "ml-100k": ("recbole", rec / "ml-100k", {}),
        # the same users and targets, negatives drawn in proportion to popularity (evaluation only)
        "ml-100k-pop": ("recbole", rec / "ml-100k", {"negative_sampling": "popularity",
                                                     "dataset": "ml-100k-popneg"}),
        "routerbench": ("routerbench", shared / "routing" / "routerbench", {}),
        "dl19": ("trec-dl", dl19, {"first_stage": "*bm25*", "split": SPLIT_DL19, "dataset": "dl19-bm25-top20"}),
        "dl21": ("trec-dl", dl21, {"first_stage": "*bm25*", "split": SPLIT_DL19, "dataset": "dl21-bm25-top20"}),
        "games-6k": ("llmrank", rec / "games-6k", {}),
        "dl19-top100": ("trec-dl", dl19, {"first_stage": "*bm25*", "split": SPLIT_DL19, "depth": "100",
                                          "dataset": "dl19-bm25-top100"}),
        "dl19-tasb-top100": ("trec-dl", dl19, {"first_stage": "*tasb*", "split": SPLIT_DL19, "depth": "100",
                                               "dataset": "dl19-tasb-top100"}),
        "dl21-top100": ("trec-dl", dl21, {"first_stage": "*bm25*", "split": SPLIT_DL19, "depth": "100",
                                          "dataset": "dl21-bm25-top100"}),
        "dl21-splade-top100": ("trec-dl", dl21, {"first_stage": "*splade*", "split": SPLIT_DL19, "depth": "100",
                                                 "dataset": "dl21-spladepp-top100"}),
        "noveleval": ("trec-dl", shared / "passage-noveleval", {"dataset": "noveleval"}),
    }
    out = {}
    for name, (source, path, params) in specs.items():
        folder = root / name
        if not (folder / "instances.jsonl").exists():
            say(f"ingesting {name} from {path}")
            ingest(source, path, folder, params, dvc=False, push=False, progress=say)
        out[name] = folder
    return out


def throughput(config: str, algo: str, steps: int, out: Path) -> dict:
    """Elimination steps per second of a short run of `algo` (a separate process, nothing else running)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "iranker.cli", "train", "--config", config, "--out", str(out),
           "--set", "stages=[]", "--set", f"algo={algo}", "--set", f"steps={steps}",
           "--set", f"checkpoint_every={steps}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if algo == "grpo":
        info = json.loads((out / "final" / "iranker-train.json").read_text())
        return {"algo": algo, "updates": steps, "elimination_steps": info["elimination_steps"],
                "seconds": round(info["seconds"], 1), "steps_per_s": info["elimination_steps_per_s"],
                "wall_s": round(wall, 1)}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    n, secs = sum(r["elimination_steps"] for r in rows), sum(r["seconds"] for r in rows)
    return {"algo": algo, "updates": steps, "elimination_steps": n, "seconds": round(secs, 1),
            "steps_per_s": n / secs, "wall_s": round(wall, 1)}


def command() -> str:
    return "python benchmarks/bench_train_quality.py " + " ".join(sys.argv[1:])


def train_and_select(cfg, run: Path, args) -> tuple[dict, dict | None, Path]:
    """Train (or reuse, or resume) the run, then choose its checkpoint on the served validation lists: the
    training record, the selection (None with --no-select) and the chosen model's folder."""
    if (run / "final" / "iranker-train.json").exists():
        say(f"reusing the finished run {run}")
    else:
        resume = (run / "checkpoints" / "latest").exists()
        say(f"training {Path(args.config).stem} into {run}" + (" (resuming)" if resume else ""))
        run_training(cfg, run, resume=resume)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    n_steps = sum(r["elimination_steps"] for r in rows)
    train_info = {"updates": len(rows), "elimination_steps": n_steps, "seconds_in_updates": round(
        sum(r["seconds"] for r in rows), 1), "steps_per_s": n_steps / sum(r["seconds"] for r in rows),
        "reward_first_20": sum(r["expected_reward"] for r in rows[:20]) / min(20, len(rows)),
        "reward_last_20": sum(r["expected_reward"] for r in rows[-20:]) / min(20, len(rows))}
    if args.no_select:
        return train_info, None, run / "final"
    states = sorted(run.glob("checkpoints/step-*/state.pt")) + [Path(c) for c in args.checkpoint]
    selection = select_served(run, states, instances=args.select_instances, log=say)
    say(f"selected {selection['best']} on the validation split")
    return train_info, selection, Path(selection["model"])


def export_card(run: Path, train_info: dict, selection: dict | None, args) -> dict:
    """What an exported adapter's card carries for the steps after it, on any machine: the run's profile, its
    training record, the selection (if made yet), the command and the result file it is for."""
    return {"run": str(run), "config": json.loads((run / "config.json").read_text()), "train": train_info,
            "selection": {k: v for k, v in (selection or {}).items() if k != "model"} or None,
            "command": command(), "result": args.out}


def export_chosen(run: Path, selection: dict | None, train_info: dict, out: Path, args) -> Path:
    """The chosen checkpoint (the last one with --no-select) as an adapter folder whose card carries what the
    evaluation needs later: the run's profile, its training record and the selection."""
    from iranker.train.adapter import export_adapter

    latest = run / "checkpoints" / "latest"  # the trainer's pointer to its last checkpoint
    state = Path(selection["checkpoint"]) if selection else run / "checkpoints" / latest.read_text().strip() / "state.pt"
    out = export_adapter(run, state, out, card=export_card(run, train_info, selection, args))
    say(f"exported {state} as {out}")
    return out


def from_adapter(adapter: Path) -> tuple[Path, Path, dict, dict, dict | None]:
    """An adapter written by --export: its merged model folder, and from its card the run's folder (on the machine
    that trained it), profile, training record and selection."""
    card_file = adapter / "card.json"
    if not card_file.is_file():
        raise SystemExit(f"--adapter {adapter}: no card.json; expected a folder written by "
                         "bench_train_quality.py --export")
    card = json.loads(card_file.read_text())
    missing = [k for k in ("config", "train") if k not in card]
    if missing:
        raise SystemExit(f"--adapter {adapter}: its card.json has no {', '.join(missing)}; it was not written by "
                         "bench_train_quality.py --export")
    say(f"evaluating the exported adapter {adapter} (checkpoint {card.get('checkpoint_step')})")
    return (materialize_adapter(adapter, adapter.name), Path(card["run"]), card["config"], card["train"],
            card.get("selection"))


def export_candidates(run: Path, train_info: dict, folder: Path, args) -> list[Path]:
    """Every kept checkpoint of the run as an adapter folder under `folder` (step-NNNNNN), each card holding what
    the selection and the evaluation need later, on any machine: the run's profile and its training record."""
    from iranker.train.adapter import export_adapter

    out = []
    for state in sorted(run.glob("checkpoints/step-*/state.pt")):
        out.append(export_adapter(run, state, folder / state.parent.name,
                                  card=export_card(run, train_info, None, args)))
        say(f"exported {state} as {out[-1]}")
    if not out:
        raise SystemExit(f"--export-candidates: {run} kept no checkpoint (checkpoints/step-*/state.pt)")
    return out


def select_candidates(folder: Path, run: Path, args) -> tuple[dict, dict, Path]:
    """--candidates: choose among the adapters --export-candidates wrote, as `select_served` chooses among a run's
    checkpoints (the same lists, models and scores; the weights are the adapters' bfloat16 ones, what ships). The
    run folder is rebuilt from the cards' profile where this machine lacks it. The chosen adapter is copied to
    --export (else kept in place) with the selection on its card. Returns the training record, the selection and
    the chosen adapter's folder."""
    adapters = sorted(p for p in folder.iterdir() if (p / "card.json").is_file()) if folder.is_dir() else []
    if not adapters:
        raise SystemExit(f"--candidates {folder}: no adapter folders with a card.json; expected the folder "
                         "--export-candidates wrote")
    cards = [json.loads((a / "card.json").read_text()) for a in adapters]
    for a, card in zip(adapters, cards, strict=True):
        missing = [k for k in ("config", "train") if k not in card]
        if missing or card["config"] != cards[0]["config"]:
            raise SystemExit(f"--candidates {a}: " + (f"its card.json has no {', '.join(missing)}" if missing else
                             "its card's profile differs from the others'; the candidates must come from one run"))
    if not (run / "config.json").is_file():
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(cards[0]["config"], indent=1))
        say(f"{run}: rebuilt from the candidates' profile (the run folder is not on this machine)")
    selection = select_served(run, adapters, instances=args.select_instances, log=say)
    say(f"selected {selection['best']} on the validation split")
    chosen = Path(selection["checkpoint"])
    out = Path(args.export) if args.export else chosen
    if out.resolve() != chosen.resolve():
        if out.exists():
            raise SystemExit(f"--export {out}: exists; give a new folder")
        shutil.copytree(chosen, out)
    card_file = out / "card.json"
    card = json.loads(card_file.read_text())
    card |= {"selection": {k: v for k, v in selection.items() if k != "model"}, "selection_command": command(),
             "result": args.out}
    card_file.write_text(json.dumps(card, indent=1))
    return cards[0]["train"], selection, out


def complete_card(adapter: Path, result_file: str, met: bool) -> None:
    """Write the evaluation's verdict into the evaluated adapter's card: the result file that holds it and whether
    the bar was met, so the folder can ship under iranker/shipped/NAME citing what it scored."""
    card_file = Path(adapter) / "card.json"
    card = json.loads(card_file.read_text())
    card |= {"result": str(Path(result_file).resolve().relative_to(ROOT)) if Path(result_file).resolve()
             .is_relative_to(ROOT) else str(result_file), "bar_met": met, "default": False}
    if not met:
        card["why_not_default"] = "the shipping bar is not met (see the result file's shortfalls)"
    card_file.write_text(json.dumps(card, indent=1))
    say(f"{card_file}: result {card['result']}, bar_met {met}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--data-root", default=str(ROOT / "data"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of the profile, as `iranker train --set` (e.g. --set algo=ppo)")
    ap.add_argument("--run", default=str(ROOT / "runs" / "cpu"), help="training run folder (reused if finished)")
    ap.add_argument("--report", default=str(ROOT / "benchmarks" / "results" / "train_quality_episodes"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_train_quality_episodes.json"))
    ap.add_argument("--limit", type=int, default=150, help="test instances per dataset and scenario (seeded)")
    ap.add_argument("--skip-top100", action="store_true", help="leave out DL19 top-100 (sliding windows; slow)")
    ap.add_argument("--no-direct", action="store_true", help="leave out the base model's direct ranking")
    ap.add_argument("--throughput-updates", type=int, default=3, help="updates per algorithm (0: skip)")
    ap.add_argument("--no-select", action="store_true",
                    help="evaluate the run's last checkpoint as is, instead of the one that scores best on the served "
                    "validation lists")
    ap.add_argument("--checkpoint", action="append", default=[],
                    help="more checkpoint state.pt files of the run to choose from (repeatable)")
    ap.add_argument("--select-instances", type=int, default=300,
                    help="whole validation lists the selection ranks (spread over the datasets)")
    ap.add_argument("--smoke", action="store_true", help="the smoke profile (tiny random model) on the built-in "
                                                         "samples, every step of the chain: checks the benchmark")
    ap.add_argument("--export", default=None, metavar="DIR",
                    help="write the chosen checkpoint as a LoRA adapter folder (`iranker model export`'s format, its "
                    "card holding the training record and the selection; under iranker/shipped/NAME it ships as "
                    "--model NAME) and evaluate that adapter, what ships, instead of the run's own folder")
    ap.add_argument("--no-evaluate", action="store_true",
                    help="stop after training, selection and --export: --out records them with the evaluation "
                    "pending, --report keeps the run's logs (a later call with --adapter DIR, on any machine, "
                    "evaluates the exported adapter and writes its verdict into its card)")
    ap.add_argument("--export-candidates", default=None, metavar="DIR",
                    help="after training, write every kept checkpoint as an adapter folder under DIR and stop, the "
                    "selection and evaluation pending (where selection would not fit the session; a later call "
                    "with --candidates DIR, on any machine, selects and evaluates)")
    ap.add_argument("--candidates", default=None, metavar="DIR",
                    help="choose among the adapters --export-candidates wrote (the served selection), then "
                    "evaluate the chosen one (copied to --export if given, with the selection on its card)")
    ap.add_argument("--adapter", default=None, metavar="DIR",
                    help="evaluate this adapter folder, written by --export, instead of training and selecting: "
                    "the training record and selection come from its card (the chain split over two machines)")
    args = ap.parse_args()
    if args.export_candidates and (args.export or args.no_evaluate or args.adapter or args.candidates):
        ap.error("--export-candidates stops after training: it takes none of --export, --no-evaluate, --adapter, "
                 "--candidates")
    if args.candidates and args.adapter:
        ap.error("--candidates selects among adapters, --adapter evaluates one: give one of them")
    if args.no_evaluate and not args.export:
        ap.error("--no-evaluate needs --export DIR: the chosen checkpoint must leave the run folder to be evaluated "
                 "later")
    shipped = (ROOT / "iranker" / "shipped").resolve()
    if args.export_candidates and Path(args.export_candidates).resolve().is_relative_to(shipped):
        ap.error(f"--export-candidates {args.export_candidates}: unevaluated adapters do not go under "
                 "iranker/shipped; write them beside the results (e.g. under --report)")
    if args.no_evaluate and Path(args.export).resolve().is_relative_to(shipped):
        ap.error(f"--export {args.export} with --no-evaluate: an adapter under iranker/shipped must cite its "
                 "evaluation; export it elsewhere (e.g. under --report), evaluate it with --adapter, then move it there")
    if args.adapter and (args.export or args.no_evaluate):
        ap.error("--adapter evaluates an exported adapter: it takes neither --export nor --no-evaluate")
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    from iranker.cli import _yaml_pairs

    overrides = _yaml_pairs(args.set, "--set", "KEY=VALUE")
    if args.smoke:
        args.config = str(ROOT / "configs" / "smoke.yaml")
        train_data, sources = ["samples"], ["samples"]
    else:
        shared = Path(args.shared)
        if not shared.exists():
            sys.exit(f"public data not found at {shared} (--shared)")
        folders = ensure_data(shared, Path(args.data_root))
        # train on the folders this benchmark ingested (the profile names the same datasets under data/)
        train_data = [str(folders[k].resolve()) for k in TRAIN_DATA]
        sources = [str(folders[k]) for k in ("ml-100k", "ml-100k-pop", "games-6k", "dl19", "dl21", "routerbench",
                                             "noveleval")]
        if not args.skip_top100:
            sources += [str(folders[k]) for k in ("dl19-top100", "dl21-top100")]
    cfg = load_config(args.config, {**overrides, "data": train_data})
    run = Path(args.run)

    t0 = time.perf_counter()
    candidates = None
    if args.adapter:
        model_dir, run, run_config, train_info, selection = from_adapter(Path(args.adapter))
        exported = Path(args.adapter)
    elif args.candidates:
        train_info, selection, exported = select_candidates(Path(args.candidates), run, args)
        run_config = json.loads((run / "config.json").read_text())
        if not args.no_evaluate:
            model_dir = materialize_adapter(exported, exported.name)
    elif args.export_candidates:
        args.no_select = True
        train_info, selection, model_dir = train_and_select(cfg, run, args)
        run_config, exported = json.loads((run / "config.json").read_text()), None
        candidates = export_candidates(run, train_info, Path(args.export_candidates), args)
    else:
        train_info, selection, model_dir = train_and_select(cfg, run, args)
        run_config, exported = json.loads((run / "config.json").read_text()), None
        if args.export:
            exported = export_chosen(run, selection, train_info, Path(args.export), args)
            if not args.no_evaluate:  # what ships is evaluated: the bfloat16 adapter, merged into the base
                model_dir = materialize_adapter(exported, exported.name)
    train_s = time.perf_counter() - t0
    run_cfg = TrainConfig.model_validate(run_config)
    ranking = run_cfg.ranking
    common = {"command": command(),
              "machine": {"cpu_threads": __import__("os").cpu_count(), "platform": platform.platform(),
                          "cpu": cpu_info()},
              "config": run_config, "run": str(run), "train": train_info, "train_wall_s": round(train_s, 1),
              "selection": selection, "exported": str(exported) if exported else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    for log_file in ("metrics.jsonl", "probe.jsonl"):  # the per-update log and the validation probe, kept with the
        if (run / log_file).is_file():             # results: render_results.py draws the training curves from them,
            shutil.copyfile(run / log_file, report / log_file)  # and --adapter on another machine finds them here
    if candidates:
        Path(args.out).write_text(json.dumps({**common, "candidates": [str(c) for c in candidates],
                                              "pending": ["selection", "evaluation"]}, indent=1))
        say(f"wrote {args.out} (selection and evaluation pending: bench_train_quality.py --candidates "
            f"{args.export_candidates} ...)")
        return
    if args.no_evaluate:
        Path(args.out).write_text(json.dumps({**common, "pending": ["evaluation"]}, indent=1))
        say(f"wrote {args.out} (evaluation pending: bench_train_quality.py --adapter {exported} ...)")
        return

    data = load_eval_data(sources, split="test", limit=args.limit)
    say(f"evaluating {len(data.instances)} test instances: trained vs base")
    t1 = time.perf_counter()
    logs = next((d for d in (run, report) if (d / "metrics.jsonl").is_file()), None)  # the run's, or their copy
    # the base is the model the run started from (the embedded one for the cpu profile; --smoke's tiny one)
    metrics = evaluate(data, args.report, model=str(model_dir), base=base_model_path(run_cfg, run),
                       direct=not args.no_direct, max_words=ranking.max_words, train_run=logs)
    eval_s = time.perf_counter() - t1

    speed = {}
    if args.throughput_updates:
        tp = Path(args.report) / "throughput"
        speed = {a: throughput(args.config, a, args.throughput_updates, tp / a) for a in ("ppo", "grpo")}
        speed["grpo_over_ppo"] = speed["grpo"]["steps_per_s"] / speed["ppo"]["steps_per_s"]

    result = {
        **common, "eval_wall_s": round(eval_s, 1), "evaluated_model": str(model_dir),
        "report": str(Path(args.report) / "report.md"), "goals": goals(metrics), "bar_met": None, "throughput": speed,
        "results": [{k: r[k] for k in ("dataset", "scenario", "n_instances", "primary_metric", "metrics",
                                        "baselines", "comparison", "parse_failures")}
                    | {"comparison_first_stage": r.get("comparison_first_stage")} for r in metrics["results"]],
    }
    result["bar_met"] = bar_met(result["goals"])
    result["shortfalls"] = shortfalls(result["goals"])
    Path(args.out).write_text(json.dumps(result, indent=1))
    if exported:
        complete_card(exported, args.out, result["bar_met"])
    from iranker.evaluate.report import summary_table

    print(summary_table(metrics), file=sys.stderr)
    for k, g in result["goals"].items():
        say(f"{k}: {g}")
    say(f"bar for shipping the model met: {result['bar_met']}")
    if speed:
        say(f"throughput (elimination steps/s): ppo {speed['ppo']['steps_per_s']:.2f}, grpo "
            f"{speed['grpo']['steps_per_s']:.2f}")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
