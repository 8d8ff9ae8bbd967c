"""The bar a trained model must clear to ship as the default, computed from an evaluation's metrics.

On every evaluated dataset and scenario (each listing order is a dataset of its own), on the primary metric:
- it beats the base model: the paired 95% interval of (trained - base) lies above zero;
- it is above the random expectation;
- it scores at least the first stage it reranks (the retriever's order on passages, popularity on recommendation,
  the best average on routing), with the paired interval of (trained - first stage) reported beside it.
"""

from __future__ import annotations


def goals(metrics: dict) -> dict[str, dict]:
    """Per `dataset/scenario`: the figures and which goal is met (see the module doc)."""
    out = {}
    for r in metrics["results"]:
        c = r.get("comparison") or {}
        if not c:
            continue
        m = r["primary_metric"]
        value = r["metrics"][m]
        rand = r["baselines"].get("random (expected)", {}).get(m)
        simple = {n: v[m] for n, v in r["baselines"].items() if not n.startswith(("base", "random"))}
        best = max(simple, key=simple.get) if simple else None
        g = {"primary_metric": m, "n_instances": r.get("n_instances"), "trained": value,
             "base": r["baselines"].get("base (iterative)", {}).get(m),
             "diff_vs_base": c[m]["diff"], "interval_vs_base": [c[m]["low"], c[m]["high"]],
             "beats_base": c[m]["low"] > 0, "random": rand, "above_random": rand is not None and value > rand,
             "best_simple_baseline": best, "best_simple_value": simple.get(best) if best else None}
        first = r["baselines"].get("first-stage", {}).get(m)
        if first is not None:
            f = (r.get("comparison_first_stage") or {}).get(m, {})
            g.update(first_stage=first, diff_vs_first_stage=value - first,
                     interval_vs_first_stage=[f["low"], f["high"]] if f else None,
                     at_least_first_stage=value >= first)
        out[f"{r['dataset']}/{r['scenario']}"] = g
    return out


def bar_met(goal: dict[str, dict]) -> bool:
    """True when every dataset meets every goal (a dataset without a first-stage figure fails that goal)."""
    return bool(goal) and all(g["beats_base"] and g["above_random"] and g.get("at_least_first_stage", False)
                              for g in goal.values())


def shortfalls(goal: dict[str, dict]) -> dict[str, list[str]]:
    """Per dataset, the goals it misses, in words (for the README table and the run log)."""
    out = {}
    for key, g in goal.items():
        miss = []
        if not g["beats_base"]:
            miss.append(f"vs base {g['diff_vs_base']:+.3f} [{g['interval_vs_base'][0]:+.3f}, "
                        f"{g['interval_vs_base'][1]:+.3f}]")
        if not g["above_random"]:
            miss.append(f"under random ({g['trained']:.3f} vs {g['random']:.3f})")
        if not g.get("at_least_first_stage", False):
            miss.append(f"under the first stage ({g['trained']:.3f} vs {g.get('first_stage')})")
        if miss:
            out[key] = miss
    return out
