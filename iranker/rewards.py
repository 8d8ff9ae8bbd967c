"""Rule-based rewards, pure functions of the model's RESPONSE (never the decoded prompt).

Scoring the prompt together with the response lets tag examples in the prompt (``e.g. <answer>[C]</answer>``) be
matched as if the model had written them, and lets a one-character answer collect ranking credit. Here the prompt
never reaches a reward: the TRL-style wrappers at the end accept `prompts` only to ignore them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from iranker.metrics import ndcg_at_k
from iranker.parsing import parse_label, parse_permutation, reasoning_blocks

INVALID_ANSWER = -0.5
FORMAT_PENALTY = -1.0
DIRECT_PENALTY_PER_ERROR = 0.1


def exclusion_score(label: str, pool_grades: Mapping[str, float]) -> float:
    """Graded credit for eliminating `label` from a pool {label: grade}.

    1 when it has the lowest grade in the pool, falling linearly to 0 as its grade reaches the pool's highest.
    A pool whose grades are all equal has no wrong choice: 1.

    >>> exclusion_score("A", {"A": 0, "B": 3})
    1.0
    >>> exclusion_score("B", {"A": 0, "B": 3, "C": 0})
    0.0
    >>> round(exclusion_score("B", {"A": 0, "B": 1, "C": 3}), 3)
    0.667
    """
    lo, hi = min(pool_grades.values()), max(pool_grades.values())
    if hi == lo:
        return 1.0
    return (hi - pool_grades[label]) / (hi - lo)


def exclusion_reward(response: str, pool_grades: Mapping[str, float], reasoning: bool = True) -> float:
    """Exclusion reward of one elimination step: `exclusion_score` of the parsed label, INVALID_ANSWER if none.

    >>> exclusion_reward("<think>A is unrelated</think><answer>[A]</answer>", {"A": 0, "B": 2})
    1.0
    >>> exclusion_reward("A", {"A": 0, "B": 2})
    -0.5
    """
    ans = parse_label(response, list(pool_grades), reasoning=reasoning)
    return exclusion_score(ans.label, pool_grades) if ans.ok else INVALID_ANSWER


def format_reward(response: str) -> float:
    """0 for exactly one `<think>` block followed by exactly one `<answer>` block and nothing else, else -1.

    >>> format_reward("<think>x</think> <answer>[B]</answer>")
    0.0
    >>> format_reward("<answer>[B]</answer>")
    -1.0
    """
    _, _, error = reasoning_blocks(response)
    return FORMAT_PENALTY if error else 0.0


def direct_ranking_reward(response: str, label_grades: Mapping[str, float], reasoning: bool = False,
                          k: int | None = None) -> float:
    """NDCG of the parsed order (missing labels earn nothing) minus 0.1 per missing, duplicate or unknown label.

    A response that is not an order at all gets INVALID_ANSWER.

    >>> direct_ranking_reward("[B] > [A]", {"A": 0, "B": 1})
    1.0
    >>> direct_ranking_reward("[B]", {"A": 0, "B": 1})  # right first place, but one label missing
    0.9
    """
    labels = list(label_grades)
    ans = parse_permutation(response, labels, reasoning=reasoning)
    if ans.error:
        return INVALID_ANSWER
    n_errors = len(ans.missing) + len(ans.duplicates) + len(ans.unknown)
    gain = ndcg_at_k(ans.order, label_grades, k or len(labels))
    return round(gain - DIRECT_PENALTY_PER_ERROR * n_errors, 10)


# ---- TRL-style reward functions: f(prompts, completions, **dataset_columns) -> list[float] ---------------------


def _text(completion) -> str:
    """TRL passes plain strings or chat messages [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


def _grades(g: Mapping[str, float] | str) -> Mapping[str, float]:
    """A grades column holds a mapping or its JSON text (Arrow columns need one type across rows)."""
    return json.loads(g) if isinstance(g, str) else g


def exclusion_reward_func(prompts: Sequence, completions: Sequence, pool_grades: Sequence[Mapping[str, float] | str],
                          **_) -> list[float]:
    """TRL reward function (reasoning mode); `pool_grades` is a dataset column, a mapping or its JSON text.
    `prompts` is accepted and ignored on purpose."""
    return [exclusion_reward(_text(c), _grades(g), reasoning=True) for c, g in zip(completions, pool_grades)]


def fast_exclusion_reward_func(prompts: Sequence, completions: Sequence,
                               pool_grades: Sequence[Mapping[str, float] | str], **_) -> list[float]:
    """TRL reward function of fast mode: the completion continues the `<answer>[` prefix with one label."""
    return [exclusion_reward(_text(c), _grades(g), reasoning=False) for c, g in zip(completions, pool_grades)]


def format_reward_func(prompts: Sequence, completions: Sequence, **_) -> list[float]:
    return [format_reward(_text(c)) for c in completions]


def direct_ranking_reward_func(prompts: Sequence, completions: Sequence,
                               label_grades: Sequence[Mapping[str, float]], **_) -> list[float]:
    return [direct_ranking_reward(_text(c), _grades(g), reasoning=True) for c, g in zip(completions, label_grades)]
