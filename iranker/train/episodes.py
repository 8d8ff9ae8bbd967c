"""Episodes sampled as serving ranks: the prompt listed once, eliminations drawn step by step on the key/value cache.

A sequential episode (a whole instance, or an on-policy sub-pool) is rolled out without gradients on the serving
backend's cached layout (`iranker.backends.transformers.CachedPools`, the very code that serves): the prompt is
prefilled once and every step re-reads only the ~13-token cue with the eliminated candidates masked out. At each
step one label is SAMPLED from the policy's distribution over the pool (seeded per episode). The decisions are then
scored, all of an episode's in one forward (and backward) pass, by `Policy.score_cues`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from iranker.prompts import iterative_prompt
from iranker.train.pools import Step


def sample_on_cache(policy, contexts, firsts: Sequence[Step], gens: Sequence[torch.Generator],
                    keep_going: Callable[[Step], bool], clock=None) -> list[list[tuple[Step, int]]]:
    """Roll out one episode per first step (cached layout: the steps share the first step's listing).

    Returns, per episode, [(step, eliminated listing position)] in order. An episode continues while its pool has
    2+ candidates and `keep_going(next step)` holds (e.g. the remaining grades still differ). `clock(phase)`, a
    context manager, times the prefill of the prompts ("rollout.prefill").
    """
    from iranker.backends.transformers import TransformersBackend

    model = policy.model.get_base_model() if hasattr(policy.model, "get_base_model") else policy.model
    backend = TransformersBackend(model_obj=model, tokenizer=policy.tokenizer,
                                  max_item_tokens=policy.cfg.ranking.max_item_tokens, name="policy")
    prompts = [iterative_prompt(contexts[st.inst], st.listing, alphabet=policy.labels) for st in firsts]
    traces: list[list[tuple[Step, int]]] = [[] for _ in firsts]
    current = list(firsts)
    active = [len(st.pool) > 1 for st in firsts]
    with torch.no_grad(), policy.autocast():
        with clock("rollout.prefill") if clock else contextlib.nullcontext():
            session = backend.open_pools(prompts, speculate=0)
        while any(active):
            decisions = session.decide([st.pool if on else [] for st, on in zip(current, active, strict=True)])
            for b, dec in enumerate(decisions):
                if not active[b]:
                    continue
                st = current[b]
                _, choice = dec[0]
                labels = [policy.labels[j] for j in st.pool]
                probs = torch.tensor([choice.logprobs[lab] for lab in labels]).exp()
                pick = st.pool[int(torch.multinomial(probs, 1, generator=gens[b]))]
                traces[b].append((st, pick))
                nxt = Step(st.inst, st.listing, [j for j in st.pool if j != pick], st.grades)
                current[b] = nxt
                active[b] = len(nxt.pool) > 1 and keep_going(nxt)
    return traces
