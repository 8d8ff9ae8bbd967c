"""The README's quality table, printed from a bench_train_quality result file (nothing typed by hand).

One row per test set and listing order (`DATASET` is the first-stage order, `DATASET@shuffled` the shuffled one):
the primary metric of random, the first stage, the best simple baseline, base and trained, the paired 95% intervals
of trained - base and trained - first stage, and the goals of the shipping bar (`iranker.evaluate.bar`) it misses.
Below it, the optimizer steps the run made and how its checkpoint was chosen: every candidate's validation score with
its standard error, and the candidates within one standard error of the chosen one (a choice the validation lists
could not make).

    python benchmarks/quality_table.py benchmarks/results/bench_train_quality.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _diff(d, interval) -> str:
    if d is None:
        return "-"
    text = f"{d:+.3f}" + (f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "")
    return f"**{text}**" if interval and interval[0] > 0 else text


def table(result: dict) -> str:
    rows = [("| test set | n | metric | random | first stage | best simple baseline | base | trained | "
             "trained − base [95%] | trained − first stage [95%] | bar |"),
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, g in result["goals"].items():
        dataset = key.rsplit("/", 1)[0]
        missed = [w for w, ok in (("base", g["beats_base"]), ("random", g["above_random"]),
                                  ("first stage", g.get("at_least_first_stage", False))) if not ok]
        best = (f"{_f(g['best_simple_value'])} ({g['best_simple_baseline']})" if g.get("best_simple_baseline")
                else "-")
        rows.append(f"| {dataset} | {g.get('n_instances', '-')} | {g['primary_metric']} | {_f(g['random'])} | "
                    f"{_f(g.get('first_stage'))} | {best} | {_f(g['base'])} | {_f(g['trained'])} | "
                    f"{_diff(g['diff_vs_base'], g['interval_vs_base'])} | "
                    f"{_diff(g.get('diff_vs_first_stage'), g.get('interval_vs_first_stage'))} | "
                    f"{'met' if not missed else 'misses ' + ', '.join(missed)} |")
    return "\n".join(rows)


def selection(result: dict) -> str:
    """The run's optimizer steps and its checkpoint choice, in words."""
    steps = f"{result['train']['updates']} optimizer steps"
    sel = result.get("selection")
    if not sel:
        return f"{steps}; the run's last checkpoint, evaluated without a served selection."
    scores = ", ".join(f"{k} {v['mean']:.3f} ± {v['se']:.3f}" for k, v in sel["scores"].items())
    close = sel["within_one_se_of_best"]
    return (f"{steps}; {sel['best']} chosen on {sel['instances']} validation lists as served ({scores}). "
            + (f"Within one standard error of it: {', '.join(close)}; the validation lists cannot tell them apart."
               if close else "No other checkpoint is within one standard error of it."))


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/bench_train_quality.json")
    result = json.loads(path.read_text())
    print(table(result))
    print(f"\n{selection(result)}")
    print(f"\nbar met: {result['bar_met']} ({path})")


if __name__ == "__main__":
    main()
