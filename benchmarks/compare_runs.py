"""Compare training runs that differ in one lever (adapted layers, LoRA rank, batch, ...) on what they did: speed
per update on the same episodes, and the validation probe at each checkpoint. No test split is read.

    python benchmarks/compare_runs.py runs/cpu-stages runs/cpu-layers6 --out benchmarks/results/train_lever_layers.json

The first run is the reference. Runs with the same seed, data and batch size draw the same episodes, update for
update (at another batch size they compare by each stage's steps per hour and decisions per second); the
speed ratio is then the median, over the updates both made, of reference seconds / run seconds - a ratio of the
same work, robust to an update slowed by something else sharing the machine. The probe is the expected exclusion
reward on the same seeded validation pools (`probe.pools` of them; its standard error is about 0.026 at 48 pools),
beside the uniform random choice on the same pools.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVERS = ("lora", "batch_size", "stages", "listing", "dtype", "lr_actor", "pools", "probe")


def summary(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    by_stage: dict[str, list[dict]] = {}
    for r in rows:
        by_stage.setdefault(r.get("stage", cfg.get("algo", "?")), []).append(r)
    stages = {s: {"updates": len(rs), "seconds": round(sum(r["seconds"] for r in rs), 1),
                  "steps_per_hour": round(3600 * len(rs) / sum(r["seconds"] for r in rs), 1),
                  "decisions_per_s": round(sum(r["elimination_steps"] for r in rs) / sum(r["seconds"] for r in rs), 3)}
              for s, rs in by_stage.items()}
    probe_file = run / "probe.jsonl"  # step 0 is the base model; per scenario; the random choice on the same pools
    probes = [{k: round(v, 4) if isinstance(v, float) else v for k, v in json.loads(x).items()}
              for x in probe_file.read_text().splitlines()] if probe_file.exists() else []
    return {"run": str(run), "settings": {k: cfg.get(k) for k in LEVERS}, "updates": len(rows), "stages": stages,
            "probe": probes, "_rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training run folders; the first is the reference")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from iranker.logs import setup

    setup()  # the library's progress lines on stderr
    from iranker.devices import cpu_info

    runs = [summary(Path(r)) for r in args.runs]
    ref = runs[0]["_rows"]
    for s in runs[1:]:
        rows = s["_rows"]
        # updates draw the same episodes only at the same batch size; at another the work per update differs, and
        # the runs compare by optimizer steps per hour and decisions per second, stage by stage
        paired = s["settings"]["batch_size"] == runs[0]["settings"]["batch_size"]
        same = [(a, b) for a, b in zip(ref, rows, strict=False)
                if paired and a["elimination_steps"] == b["elimination_steps"]]
        s["vs_reference"] = {
            "updates_compared": len(same),
            "same_episodes": paired and len(same) == min(len(ref), len(rows)),
            "speed_ratio_median": round(statistics.median(a["seconds"] / b["seconds"] for a, b in same), 3)
            if same else None,
            "by_stage": {st: {k: round(v[k] / runs[0]["stages"][st][k], 3) if runs[0]["stages"][st][k] else None
                              for k in ("steps_per_hour", "decisions_per_s")}
                         for st, v in s["stages"].items() if st in runs[0]["stages"]},
        }
    for s in runs:
        del s["_rows"]
    result = {"benchmark": "compare_runs", "command": "python benchmarks/compare_runs.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpu": cpu_info()}, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
