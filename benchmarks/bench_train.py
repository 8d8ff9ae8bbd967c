"""Training throughput: elimination decisions per second of the per-step path and of the episode path, same model,
data and ranking settings, in one run.

- per-step: one random sub-pool (2-20 candidates of an instance) per episode, in the serving layout; every decision
  is its own forward and backward pass over the listed prompt (`pools.episodes: 0`).
- episode: whole instances ranked as serving ranks them - eliminations sampled on the key/value cache - and all
  n-1 decisions of an episode scored in one forward and backward pass (`pools.episodes: 1`).
- episode-recompute: the episode path with the frozen layers below the adapter run again in every pass
  (`lora.reuse_frozen: false`); episode / episode-recompute is what reusing their output gains.
- supervised: the warm-start stage (`algo: supervised`): the episode path's draws teacher-forced on gold
  eliminations, one forward and backward pass per episode; no rollout, no reference pass.
- before (reference): the trainer's earlier setting, relisted pools of 2-8 with 40 words per candidate, one pass
  per decision (not the serving layout; listed for context only).

All: the embedded SmolLM2-135M, LoRA r64 on attention and MLP of the top 12 layers, exact expected-reward gradient
(`algo: expected`), the same instances (training splits of MovieLens-100K, RouterBench and DL19 BM25 top-20 from
../shared/data), the dtype given by --dtype. Decisions/s = decisions of the timed updates / their seconds (the first
update is a warm-up and not counted). Writes benchmarks/results/bench_train.json.

    python benchmarks/bench_train.py [--updates 3] [--batch 4] [--dtype auto] [--paths supervised,episode,...]

Each path's log also splits its time by phase (rollout, reference, forward, backward, optimizer), and gives its
optimizer steps per hour (3600 / mean seconds per update). The result records the CPU (model, SIMD flags, whether
it computes bf16 natively) and the dtype `auto` chose.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train_quality import ensure_data

from iranker.devices import cpu_info, training_dtype
from iranker.train import load_config
from iranker.train.loop import Trainer
from iranker.train.modeling import load_model
from iranker.train.pools import load_training_instances


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def measure(name: str, cfg, updates: int) -> dict:
    import torch

    torch.manual_seed(0)
    model, tok = load_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, load_training_instances(cfg), model, tok, Path(tmp), progress=False)
        rows = []
        for u in range(updates + 1):
            t0 = time.perf_counter()
            row = trainer.update(u)
            row["wall_s"] = time.perf_counter() - t0
            say(f"{name}: update {u} {row['elimination_steps']} decisions in {row['wall_s']:.1f} s"
                + (" (warm-up)" if u == 0 else ""))
            rows.append(row)
    timed = rows[1:]
    decisions = sum(r["elimination_steps"] for r in timed)
    seconds = sum(r["wall_s"] for r in timed)
    phases: dict[str, float] = {}
    for r in timed:
        for k, v in r["seconds_by_phase"].items():
            phases[k] = phases.get(k, 0.0) + v
    return {"path": name, "algo": cfg.stage_at(0).algo, "updates_timed": len(timed), "decisions": decisions,
            "seconds": round(seconds, 2), "decisions_per_s": decisions / seconds,
            "optimizer_steps_per_hour": 3600 * len(timed) / seconds,
            "seconds_by_phase": {k: round(v, 2) for k, v in phases.items()},
            "share_by_phase": {k: round(v / seconds, 3) for k, v in phases.items()},
            "mean_pool_size": (sum(int(k) * n for r in timed for k, n in r["steps_by_pool_size"].items()) / decisions
                               if all("steps_by_pool_size" in r for r in timed) else None),
            "expected_reward": sum(r["expected_reward"] * r["elimination_steps"] for r in timed) / decisions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--data-root", default=str(ROOT / "data" / "bench"))
    ap.add_argument("--updates", type=int, default=3, help="timed updates per path (after one warm-up)")
    ap.add_argument("--batch", type=int, default=4, help="episodes per update of the episode path")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="auto: bf16 where the CPU computes it natively, else float32 (as training's auto)")
    ap.add_argument("--paths", default="supervised,episode,per-step",
                    help="comma-separated, of supervised, per-step, episode, episode-recompute, before")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_train.json"))
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - {"supervised", "per-step", "episode", "episode-recompute", "before"}
    if unknown:
        sys.exit(f"--paths: unknown {sorted(unknown)}; expected supervised, per-step, episode, episode-recompute or "
                 "before")

    data = ensure_data(Path(args.shared), Path(args.data_root))
    datasets = [str(data[k]) for k in ("ml-100k", "routerbench", "dl19")]
    base = load_config(ROOT / "configs" / "cpu.yaml", {"data": datasets, "dtype": args.dtype, "threads": 2,
                                                       "stages": [], "algo": "expected", "probe": {"pools": 0}})
    pools = base.pools.model_copy(update={"min_size": 2, "max_size": 20, "on_policy": 0.0,
                                          "balance_positions": False})
    episode = base.model_copy(update={"batch_size": args.batch, "pools": pools.model_copy(update={"episodes": 1.0})})
    configs = {
        # per-step: as many sub-pool decisions per update as the episode path makes, roughly (19 per episode)
        "per-step": base.model_copy(update={"batch_size": args.batch * 10,
                                            "pools": pools.model_copy(update={"episodes": 0.0})}),
        "episode": episode,
        # the warm start: the same draws as the episode path, teacher-forced on gold eliminations
        "supervised": episode.model_copy(update={"algo": "supervised"}),
        # the same episodes, the frozen layers below the adapter run again in every pass (lora.reuse_frozen off)
        "episode-recompute": episode.model_copy(update={"lora": base.lora.model_copy(
            update={"reuse_frozen": False})}),
        "before": base.model_copy(update={
            "batch_size": args.batch * 10,
            "ranking": base.ranking.model_copy(update={"layout": "relist", "max_words": 40}),
            "pools": pools.model_copy(update={"max_size": 8, "episodes": 0.0})}),
    }
    results = [measure(p, configs[p], args.updates) for p in paths]
    by = {r["path"]: r for r in results}

    def ratio(a: str, b: str) -> float | None:
        return by[a]["decisions_per_s"] / by[b]["decisions_per_s"] if a in by and b in by else None

    over = ratio("episode", "per-step")
    out = {"benchmark": "bench_train", "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
           "model": "smollm2-135m", "dtype": args.dtype, "lora": base.lora.model_dump(),
           "dtype_used": str(training_dtype(args.dtype, __import__("torch").device("cpu"))),
           "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(),
                       "torch": __import__("torch").__version__, "cpu": cpu_info()},
           "results": results, "episode_over_per_step": over, "goal": ">= 5x",
           "goal_met": None if over is None else over >= 5,
           "frozen_reuse_gain": ratio("episode", "episode-recompute"),
           "supervised_over_episode": ratio("supervised", "episode")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for r in results:
        say(f"{r['path']}: {r['decisions_per_s']:.2f} decisions/s, {r['optimizer_steps_per_hour']:.0f} optimizer steps "
            f"per hour ({r['decisions']} in {r['seconds']} s); time shares {r['share_by_phase']}")
    if over is not None:
        say(f"episode / per-step: {over:.1f}x (goal >= 5x)")
    if out["frozen_reuse_gain"] is not None:
        say(f"episode / episode-recompute (frozen layers reused / run again): {out['frozen_reuse_gain']:.2f}x")
    say(f"-> {args.out}")


if __name__ == "__main__":
    main()
