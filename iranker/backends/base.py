"""The Backend protocol: what the rankers need from a model, whatever runs it.

- `choose(prompts)`: fast mode. One forward pass per prompt; the choice is restricted to the prompt's labels.
- `generate(prompts, ...)`: reasoning mode and direct ranking. Free text, parsed strictly by the ranker.

A backend may also offer `open_pools(prompts, speculate, alive=None)` returning a `PoolSession` (the cached
elimination layout): encode each prompt once with every candidate, then answer each elimination step by masking the
eliminated candidates out of the key/value cache and re-reading only the short cue. `alive[i]()`, asked during the
encoding, says whether prompt i's answer is still wanted (an abandoned one is not computed further). Only the in-process transformers backend has it; the rankers fall back
to re-listing the pool when a backend lacks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from iranker.prompts import Prompt


@dataclass
class Choice:
    """A fast-mode decision. `label` is None only when the backend could not restrict the choice (then `error`)."""

    label: str | None
    logprobs: dict[str, float] = field(default_factory=dict)  # over the pool's labels, normalised among them
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 1


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Backend(Protocol):
    name: str

    def choose(self, prompts: Sequence[Prompt]) -> list[Choice]: ...

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0) -> list[Generation]:
        ...


class PoolSession(Protocol):
    """The cached elimination layout of a batch of prompts, opened by `backend.open_pools(prompts, speculate)`."""

    prompts: list[Prompt]
    prompt_tokens: list[int]  # tokens encoded per prompt so far

    def decide(self, remaining: Sequence[Sequence[int]]) -> list[list[tuple[int, Choice]]]:
        """The next decisions of every prompt, `[(eliminated item position, Choice)]`, at least one each;
        `remaining[b]` = item positions still in prompt b's pool. More than one when speculation was right."""
        ...


def choice_from_scores(labels: Sequence[str], scores: Sequence[float], prompt_tokens: int = 0) -> Choice:
    """Greedy choice among `labels` given unnormalised log-scores; logprobs renormalised over the labels."""
    top = max(scores)
    log_z = top + math.log(sum(math.exp(s - top) for s in scores))
    logprobs = {lab: s - log_z for lab, s in zip(labels, scores)}
    best = max(range(len(labels)), key=lambda i: scores[i])
    return Choice(labels[best], logprobs, None, prompt_tokens, 1)
