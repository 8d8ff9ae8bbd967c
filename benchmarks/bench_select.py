"""Served checkpoint selection with the frozen layers' prefill shared by all models, against each model prefilling
on its own: the same validation lists, checkpoints and base, in one run.

    python benchmarks/bench_select.py runs/transfer/all --steps 40 80 132 --instances 28 \
        --out benchmarks/results/bench_select.json

`iranker.train.select.select_served` ranks whole validation lists with every checkpoint and the base model, as they
would serve. With LoRA on the top layers only, every model computes the same keys and values in the layers below it
over a list's prompt, so `select_served` runs those once per list for all models (`SharedPrefixes`) and each model
only its own top layers and the elimination steps. This runs the selection both ways on the same lists
(`share_frozen` on, then off) and reports each one's ranking seconds, their ratio, and whether every model's
score is the same both ways (it must be: the computation is the same). The run's config names its data.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a training run folder with checkpoints and LoRA on its top layers")
    ap.add_argument("--steps", type=int, nargs="+", required=True, help="the checkpoints (update numbers) to score")
    ap.add_argument("--instances", type=int, default=28, help="about this many validation lists (both orders)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_select.json"))
    args = ap.parse_args()
    from iranker.devices import cpu_info
    from iranker.logs import setup
    from iranker.train.select import select_served

    say = setup().info
    run = Path(args.run)
    states = [run / "checkpoints" / f"step-{s:06d}" / "state.pt" for s in args.steps]
    missing = [str(s) for s in states if not s.is_file()]
    if missing:
        raise SystemExit(f"--steps: no checkpoint at {', '.join(missing)}")
    ways = {}
    with tempfile.TemporaryDirectory() as tmp:
        for share in (True, False):
            name = "shared" if share else "alone"
            say(f"selection with the frozen layers {'shared' if share else 'run by each model'}")
            ways[name] = select_served(run, states, instances=args.instances, out=Path(tmp) / name, log=say,
                                       batch_size=args.batch_size, share_frozen=share)
    shared, alone = ways["shared"], ways["alone"]
    scores = {k: {"shared": shared["scores"][k]["mean"], "alone": alone["scores"][k]["mean"]} for k in shared["scores"]}
    cfg = json.loads((run / "config.json").read_text())
    result = {
        "benchmark": "bench_select",
        "command": "python benchmarks/bench_select.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu": cpu_info()},
        "run": str(run), "model": cfg.get("model"), "lora": cfg.get("lora"), "ranking": cfg.get("ranking"),
        "models": ["base"] + [f"step-{s}" for s in args.steps],
        "validation_lists": shared["instances"],
        "frozen_layers_shared": shared["frozen_layers_shared"],
        "seconds": {"shared": shared["ranking_seconds"], "alone": alone["ranking_seconds"]},
        "speedup": round(alone["ranking_seconds"] / shared["ranking_seconds"], 3),
        "same_scores": all(v["shared"] == v["alone"] for v in scores.values()),
        "same_choice": shared["best"] == alone["best"],
        "scores": scores,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("validation_lists", "seconds", "speedup", "same_scores")}, indent=1))


if __name__ == "__main__":
    main()
