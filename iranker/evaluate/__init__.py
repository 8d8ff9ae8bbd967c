"""Evaluation harness: rank instances, score them per scenario, always beside the random expectation."""

from __future__ import annotations

from collections.abc import Sequence

from iranker.metrics import instance_metrics, random_instance_metrics
from iranker.schema import RankingInstance, RankResponse

# Published nDCG@10 on TREC DL 2019 (trec_eval, full qrels), for the evaluation report's reference line.
PUBLISHED_DL19 = {"BM25": 0.5058, "SPLADE++": 0.7308, "RankZephyr-7B (BM25 top-100)": 0.7365,
                  "MonoT5-3B (BM25 top-100)": 0.7173, "Qwen2.5-7B-Instruct listwise (BM25 top-100)": 0.6987}


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


def score_by_scenario(instances: Sequence[RankingInstance], responses: Sequence[RankResponse],
                      ks: Sequence[int] = (1, 3, 10)) -> dict[str, dict]:
    """{scenario: {"n_instances", "metrics", "random", "parse_failure_rate"}} over the same instances."""
    groups: dict[str, list[tuple[RankingInstance, RankResponse]]] = {}
    for inst, resp in zip(instances, responses, strict=True):
        groups.setdefault(inst.scenario, []).append((inst, resp))
    out = {}
    for scenario, pairs in groups.items():
        model = [instance_metrics(r.ranking, i.relevance, ks, _min_grade(i)) for i, r in pairs]
        rand = [random_instance_metrics([c.id for c in i.candidates], i.relevance, ks, _min_grade(i))
                for i, _ in pairs]
        decisions = sum(max(r.usage.llm_calls, 1) for _, r in pairs)
        out[scenario] = {"n_instances": len(pairs), "metrics": _mean(model), "random": _mean(rand),
                         "parse_failure_rate": sum(r.parse_failures for _, r in pairs) / decisions}
    return out


def _min_grade(inst: RankingInstance) -> float:
    """Relevant = grade >= 1 for passages and items; for routing (graded utilities) the best model(s)."""
    if inst.scenario == "routing":
        return max(inst.relevance.values(), default=1.0) or 1.0
    return 1.0


def format_table(scores: dict[str, dict], metrics: Sequence[str] = ("mrr", "ndcg@10", "hit@1")) -> str:
    head = f"{'scenario':<15} {'n':>3}  " + "  ".join(f"{m:>17}" for m in metrics) + "  parse-fail"
    lines = [head, f"{'':<15} {'':>3}  " + "  ".join(f"{'model (random)':>17}" for _ in metrics)]
    for scenario, s in scores.items():
        cells = "  ".join(f"{s['metrics'][m]:>8.3f} ({s['random'][m]:.3f})" for m in metrics)
        lines.append(f"{scenario:<15} {s['n_instances']:>3}  {cells}  {s['parse_failure_rate']:>9.1%}")
    return "\n".join(lines)
