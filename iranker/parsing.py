"""Strict parsing of model answers. Every failure says why; nothing is guessed.

Reasoning answers must be exactly `<think>...</think><answer>[X]</answer>` (whitespace between and around the
blocks allowed, nothing else). Fast answers are a bare label, `[X]` or `X]` (the `[` is the answer prefix).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_REASONING = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_LABEL = re.compile(r"\[\s*([A-Za-z0-9]+)\s*\]")
_BARE_LABEL = re.compile(r"\s*\[?\s*([A-Z])\s*\]\s*\.?\s*")


@dataclass(frozen=True)
class LabelAnswer:
    label: str | None  # None when the answer failed to parse
    error: str | None = None  # why it failed
    think: str | None = None

    @property
    def ok(self) -> bool:
        return self.label is not None


def reasoning_blocks(response: str) -> tuple[str | None, str | None, str | None]:
    """(think, answer, error) of a response that must be one think block then one answer block."""
    n_think, n_answer = len(_THINK.findall(response)), len(_ANSWER.findall(response))
    if n_answer == 0:
        return None, None, "no <answer>...</answer> block"
    if n_answer > 1:
        return None, None, f"{n_answer} <answer> blocks; expected exactly one"
    if n_think != 1:
        return None, None, f"{n_think} <think> blocks; expected exactly one before the answer"
    m = _REASONING.fullmatch(response)
    if m is None:
        return None, None, "text outside the <think> and <answer> blocks, or the blocks are out of order"
    return m.group("think").strip(), m.group("answer").strip(), None


def parse_label(response: str, labels: Sequence[str], reasoning: bool) -> LabelAnswer:
    """The one label a response names, checked against the labels still in the pool.

    >>> parse_label("<think>B is off-topic</think><answer>[B]</answer>", "ABC", reasoning=True).label
    'B'
    >>> parse_label("[D]", "ABC", reasoning=False).error
    "label 'D' is not in the pool (A, B, C)"
    """
    think = None
    if reasoning:
        think, answer, error = reasoning_blocks(response)
        if error:
            return LabelAnswer(None, error)
        m = _LABEL.fullmatch(answer)
        if m is None:
            return LabelAnswer(None, f"answer {answer[:40]!r} is not one label like [C]", think)
        label = m.group(1)
    else:
        m = _BARE_LABEL.fullmatch(response)
        if m is None:
            return LabelAnswer(None, f"response {response[:40]!r} is not one label like [C]")
        label = m.group(1)
    if label not in labels:
        return LabelAnswer(None, f"label {label!r} is not in the pool ({', '.join(labels)})", think)
    return LabelAnswer(label, None, think)


@dataclass(frozen=True)
class PermutationAnswer:
    order: list[str]  # valid labels, first occurrence, in the order given
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    error: str | None = None  # a format error (nothing usable)
    think: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not (self.missing or self.duplicates or self.unknown)

    def problem(self) -> str | None:
        if self.error:
            return self.error
        parts = [f"{name}: {', '.join(v)}" for name, v in
                 (("missing", self.missing), ("duplicate", self.duplicates), ("unknown", self.unknown)) if v]
        return "; ".join(parts) or None


def parse_permutation(response: str, labels: Sequence[str], reasoning: bool) -> PermutationAnswer:
    """A full order `[B] > [A] > [C]` (inside `<answer>` when reasoning). Missing labels are reported, not filled.

    >>> parse_permutation("[B] > [A]", "ABC", reasoning=False).missing
    ['C']
    """
    think = None
    body = response
    if reasoning:
        think, body, error = reasoning_blocks(response)
        if error:
            return PermutationAnswer([], list(labels), error=error)
    body = body.strip()
    if not re.fullmatch(r"(\[\s*[A-Za-z0-9]+\s*\]\s*(>|,)?\s*)+", body):
        return PermutationAnswer([], list(labels), error=f"answer {body[:40]!r} is not labels separated by '>'",
                                 think=think)
    order, dups, unknown, seen = [], [], [], set()
    for lab in _LABEL.findall(body):
        if lab not in labels:
            unknown.append(lab)
        elif lab in seen:
            dups.append(lab)
        else:
            seen.add(lab)
            order.append(lab)
    missing = [lab for lab in labels if lab not in seen]
    return PermutationAnswer(order, missing, dups, unknown, None, think)
