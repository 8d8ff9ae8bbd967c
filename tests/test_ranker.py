"""The rankers on a tiny random model (real transformers code paths) and on a scripted backend (ranking logic)."""

from __future__ import annotations

import pytest
import torch

from iranker.backends.base import Backend, Generation, choice_from_scores
from iranker.prompts import Prompt, build_context, iterative_prompt
from iranker.ranker import DirectRanker, IterativeRanker, RankerConfig, rank_requests
from iranker.schema import RankRequest


def passage_request(n: int, qid: str = "q") -> RankRequest:
    return RankRequest(scenario="passage", query=f"query {qid}",
                       candidates=[{"id": f"{qid}-{i}", "text": f"passage number {i} " + "word " * (i % 5)}
                                   for i in range(n)])


class Scripted:
    """A Backend that eliminates by a fixed preference: the candidate whose text holds the lowest number."""

    name = "scripted"

    def __init__(self, reasoning_text=None):
        self.reasoning_text = reasoning_text
        self.calls = 0

    @staticmethod
    def _worst(p: Prompt) -> str:
        nums = {lab: int(item.split("number ")[1].split()[0]) for lab, item in zip(p.labels, p.items)}
        return min(nums, key=nums.get)

    def choose(self, prompts):
        self.calls += 1
        return [choice_from_scores(p.labels, [1.0 if lab == self._worst(p) else 0.0 for lab in p.labels], 10)
                for p in prompts]

    def generate(self, prompts, max_new_tokens, temperature=0.0):
        self.calls += 1
        if self.reasoning_text is not None:
            return [Generation(self.reasoning_text, 10, 5) for _ in prompts]
        return [Generation(f"<think>lowest number</think><answer>[{self._worst(p)}]</answer>", 10, 5)
                for p in prompts]


def test_scripted_backend_satisfies_the_protocol():
    assert isinstance(Scripted(), Backend)


@pytest.mark.parametrize("reasoning", [False, True])
def test_elimination_order_gives_the_ranking(reasoning):
    req = passage_request(6)
    resp = IterativeRanker(Scripted(), RankerConfig(reasoning=reasoning)).rank(req)
    # the scripted model removes the lowest number first, so the ranking is highest number first
    assert resp.ranking == [f"q-{i}" for i in (5, 4, 3, 2, 1, 0)]
    assert [e.id for e in resp.eliminated] == [f"q-{i}" for i in range(5)]
    assert [e.step for e in resp.eliminated] == [1, 2, 3, 4, 5]
    assert resp.usage.llm_calls == 5 and resp.parse_failures == 0


@pytest.mark.parametrize("n, window, stride, calls", [(30, 8, 4, 7 * 7), (21, 20, 10, 2 * 19), (9, 8, 8, 2 * 7)])
def test_long_lists_are_ranked_with_sliding_windows(n, window, stride, calls):
    req = passage_request(n)
    resp = IterativeRanker(Scripted(), RankerConfig(window=window, stride=stride)).rank(req)
    # windows move bottom-up, so the top `window - stride` (at least) end in the right order
    assert resp.ranking[: window - stride] == [f"q-{i}" for i in reversed(range(n))][: window - stride]
    assert sorted(resp.ranking) == sorted(c.id for c in req.candidates)
    assert resp.usage.llm_calls == calls
    assert [e.step for e in resp.eliminated] == list(range(1, calls + 1))


def test_reasoning_parse_failures_are_counted_and_fall_back_to_the_last():
    req = passage_request(4)
    resp = IterativeRanker(Scripted("I think C"), RankerConfig(reasoning=True)).rank(req)
    assert resp.parse_failures == 3
    assert [e.id for e in resp.eliminated] == ["q-3", "q-2", "q-1"]  # fallback: the pool's last, each time
    assert "parse failure" in resp.eliminated[0].reasoning


def test_requests_are_batched_together():
    backend = Scripted()
    reqs = [passage_request(5, f"q{i}") for i in range(6)]
    out = IterativeRanker(backend, RankerConfig(batch_size=16)).rank_many(reqs)
    assert backend.calls == 4  # 4 steps for all six requests at once
    assert all(r.ranking[0].endswith("-4") for r in out)


def test_top_k_truncates_and_one_candidate_needs_no_call():
    backend = Scripted()
    req = passage_request(5).model_copy(update={"top_k": 2})
    assert IterativeRanker(backend).rank(req).ranking == ["q-4", "q-3"]
    one = IterativeRanker(backend).rank(passage_request(1))
    assert one.ranking == ["q-0"] and one.usage.llm_calls == 0


def test_direct_ranker_fills_missing_and_counts_the_failure():
    class Direct(Scripted):
        def generate(self, prompts, max_new_tokens, temperature=0.0):
            return [Generation("[C] > [A]", 10, 4) for _ in prompts]

    resp = DirectRanker(Direct()).rank(passage_request(4))
    assert resp.ranking == ["q-2", "q-0", "q-1", "q-3"] and resp.parse_failures == 1


def test_rank_requests_follows_each_requests_options():
    direct = RankRequest.model_validate({**passage_request(3, "b").model_dump(), "options": {"method": "direct"}})
    reqs = [passage_request(3, "a"), direct]
    out = rank_requests(Scripted(), reqs)
    assert out[0].eliminated and not out[1].eliminated


# ---- the transformers backend on a tiny random model ---------------------------------------------------------------

@pytest.mark.parametrize("layout", ["cached", "relist"])
def test_tiny_model_returns_a_permutation(tiny_backend, layout):
    req = passage_request(12)
    resp = IterativeRanker(tiny_backend, RankerConfig(layout=layout)).rank(req)
    assert sorted(resp.ranking) == sorted(c.id for c in req.candidates)
    assert len(resp.eliminated) == 11 and resp.parse_failures == 0 and resp.model == "tiny"
    assert 1 <= resp.usage.llm_calls <= 11  # cached: speculation may take several decisions in one pass


@pytest.mark.parametrize("layout", ["cached", "relist"])
def test_batched_equals_one_by_one(tiny_backend, layout):
    reqs = [passage_request(n, f"q{n}") for n in (3, 7, 12, 5)]
    one = [IterativeRanker(tiny_backend, RankerConfig(layout=layout, batch_size=1)).rank(r) for r in reqs]
    many = IterativeRanker(tiny_backend, RankerConfig(layout=layout, batch_size=4)).rank_many(reqs)
    assert [r.ranking for r in one] == [r.ranking for r in many]


def test_cached_steps_split_into_groups_give_the_same_rankings(tiny_backend):
    reqs = [passage_request(n, f"q{n}") for n in (3, 7, 12, 5, 9)]
    whole = IterativeRanker(tiny_backend, RankerConfig(batch_size=8)).rank_many(reqs)
    budget, tiny_backend.max_step_tokens = tiny_backend.max_step_tokens, 200
    try:
        session = tiny_backend.open_pools([iterative_prompt(build_context(r), list(range(len(r.candidates))))
                                           for r in reqs])
        assert len(session.groups) > 1
        split = IterativeRanker(tiny_backend, RankerConfig(batch_size=8)).rank_many(reqs)
    finally:
        tiny_backend.max_step_tokens = budget
    assert [r.ranking for r in split] == [r.ranking for r in whole]


@torch.inference_mode()
def test_cached_step_equals_a_full_pass_with_the_eliminated_masked(tiny_backend):
    """A cached step must give the logits of one uncached pass over the same tokens with the same attention mask."""
    ctxs = [build_context(passage_request(n, f"q{n}")) for n in (6, 9)]
    prompts = [iterative_prompt(c, list(range(len(c.texts)))) for c in ctxs]
    session = tiny_backend.open_pools(prompts)
    remaining = [[0, 2, 5], [1, 3, 4, 8]]
    session.decide([list(range(6)), list(range(9))])  # a first step, so the in-place tail is rewritten
    cached = [chain[0][1] for chain in session.decide(remaining)]
    for b, (p, keep) in enumerate(zip(prompts, remaining)):
        enc = tiny_backend.encoder.encode(p)
        mask = torch.ones(len(enc), dtype=torch.long)
        start = len(enc.head)
        for i, item in enumerate(enc.items):
            if i not in keep:
                mask[start:start + len(item)] = 0
            start += len(item)
        ids = torch.tensor([enc.ids])
        logits = tiny_backend.model(input_ids=ids, attention_mask=mask[None],
                                    position_ids=torch.arange(len(enc))[None]).logits[0, -1]
        labels = [p.labels[i] for i in keep]
        full = choice_from_scores(labels, logits[[tiny_backend.encoder.label_ids[x] for x in labels]].tolist())
        assert cached[b].label == full.label
        for lab in labels:
            assert cached[b].logprobs[lab] == pytest.approx(full.logprobs[lab], abs=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_speculation_changes_nothing_but_the_number_of_passes(tiny_tokenizer, seed):
    """Speculative elimination must give exactly the rankings of one step per pass, in fewer passes."""
    from conftest import make_tiny_model

    from iranker.backends.transformers import TransformersBackend

    backend = TransformersBackend(model_obj=make_tiny_model(tiny_tokenizer, seed=seed), tokenizer=tiny_tokenizer,
                                  max_step_tokens=1_000_000)  # room for the extra rows: speculation on
    reqs = [passage_request(n, f"q{n}") for n in (2, 6, 13, 20)]
    plain = IterativeRanker(backend, RankerConfig(speculate=0, batch_size=4)).rank_many(reqs)
    spec = IterativeRanker(backend, RankerConfig(speculate=3, batch_size=4)).rank_many(reqs)
    assert [r.ranking for r in spec] == [r.ranking for r in plain]
    assert [r.usage.llm_calls for r in plain] == [len(r.candidates) - 1 for r in reqs]
    assert sum(r.usage.llm_calls for r in spec) < sum(r.usage.llm_calls for r in plain)


def test_speculation_is_off_when_the_extra_rows_do_not_fit(tiny_backend):
    prompts = [iterative_prompt(build_context(passage_request(20, f"q{i}")), list(range(20))) for i in range(16)]
    assert tiny_backend.open_pools(prompts, speculate=1).k == 1
    assert tiny_backend.open_pools(prompts[:1], speculate=1).k == 2


def test_fast_choice_is_always_a_pool_label(tiny_backend):
    p = iterative_prompt(build_context(passage_request(5)), [4, 2])
    (choice,) = tiny_backend.choose([p])
    assert choice.label in ("A", "B") and set(choice.logprobs) == {"A", "B"}
    assert sum(torch.tensor(list(choice.logprobs.values())).exp()) == pytest.approx(1.0)


def test_reasoning_mode_counts_failures_of_an_untrained_model(tiny_backend):
    """A random model does not write the answer format: every step must be a counted failure, never hidden."""
    resp = IterativeRanker(tiny_backend, RankerConfig(reasoning=True, max_new_tokens=8)).rank(passage_request(4))
    assert sorted(resp.ranking) == sorted(f"q-{i}" for i in range(4))
    assert resp.parse_failures == 3 and resp.usage.completion_tokens > 0


def test_candidate_text_is_capped_in_tokens(tiny_tokenizer):
    from iranker.backends.tokens import PromptEncoder

    enc = PromptEncoder(tiny_tokenizer, max_item_tokens=16)
    req = RankRequest(scenario="passage", query="q", candidates=[{"id": "a", "text": "vaccines " * 100}])
    e = enc.encode(iterative_prompt(build_context(req), [0]))
    assert len(e.items[0]) == 16


def test_window_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="window"):
        RankerConfig(window=40)


@pytest.mark.parametrize("n", [5, 20, 45])
@pytest.mark.parametrize("layout", ["cached", "relist"])
def test_the_cost_estimate_is_the_prompt_tokens_ranking_takes(tiny_backend, n, layout):
    """What the server admits and batches by (`estimate_cost`) is, before ranking, within a fifth of the prompt
    tokens the ranking then reports, and counts its model passes exactly where no decision is speculated."""
    from iranker.ranker import estimate_cost

    config = RankerConfig(layout=layout, speculate=0)
    req = passage_request(n)
    cost = estimate_cost(tiny_backend, config, req)
    resp = IterativeRanker(tiny_backend, config).rank(req)
    assert cost.passes == resp.usage.llm_calls
    assert 0.8 < cost.tokens / resp.usage.prompt_tokens < 1.25, (cost, resp.usage)
    # more or longer candidates cost more
    assert estimate_cost(tiny_backend, config, passage_request(n + 5)).tokens > cost.tokens


def test_an_abandoned_request_stops_inside_its_prefill(tiny_backend):
    """Cancellation reaches the prefill: a long prompt is encoded in PREFILL_CHUNK-token chunks, `alive` is asked
    before each, and once it says no the rest is not computed (counted by a forward hook on the real model); a
    prompt already abandoned costs no forward pass at all, and its neighbours' decisions are unchanged."""
    from iranker.backends.transformers import PREFILL_CHUNK

    long = RankRequest(scenario="passage", query="q", candidates=[
        {"id": f"d{i}", "text": "a long passage about many things " * 6} for i in range(20)])
    short = passage_request(4)
    prompts = [iterative_prompt(build_context(r), list(range(len(r.candidates)))) for r in (long, short)]
    n_tokens = len(tiny_backend.encoder.encode(prompts[0]))
    assert n_tokens > 2 * PREFILL_CHUNK  # several chunks
    calls = []
    hook = tiny_backend.model.base_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        asked = []

        def alive_once():  # wanted for the first chunk only
            asked.append(1)
            return len(asked) == 1

        session = tiny_backend.open_pools(prompts, alive=[alive_once, lambda: True])
        prefill_calls = len(calls)
        assert len(asked) == 2 and prefill_calls == 1 + 1  # one chunk of the long prompt, the short one whole
        kept = session.decide([[], list(range(4))])[1]
        calls.clear()
        whole = tiny_backend.open_pools(prompts[1:]).decide([list(range(4))])[0]
        assert [(i, c.label) for i, c in kept] == [(i, c.label) for i, c in whole]
        calls.clear()
        tiny_backend.open_pools(prompts[:1], alive=[lambda: False])
        assert calls == []
    finally:
        hook.remove()


@torch.inference_mode()
def test_models_sharing_their_lower_layers_rank_as_each_alone(tiny_tokenizer):
    """`SharedPrefixes`: models whose lower layers are the same (a run's checkpoints and their base) run a prefix
    through those layers once; each model's prefix cache, chunk for chunk, and rankings equal its own prefill's. A
    model whose lower layers differ is refused."""
    import copy

    from conftest import make_tiny_model

    from iranker.backends.transformers import PREFILL_CHUNK, SharedPrefixes, TransformersBackend

    base = make_tiny_model(tiny_tokenizer)
    tuned = copy.deepcopy(base)
    torch.manual_seed(1)
    for p in tuned.model.layers[1].parameters():  # the top layer only, as an adapter on the top layers trains
        p.add_(0.5 * torch.randn_like(p))
    store = SharedPrefixes(split=1)
    reqs = [passage_request(n, f"q{n}") for n in (3, 12, 20)]
    long_ids = torch.randint(10, len(tiny_tokenizer), (2 * PREFILL_CHUNK + 57,)).tolist()  # three prefill chunks
    rankings = {}
    for name, model in (("base", base), ("tuned", tuned)):
        alone = TransformersBackend(model_obj=model, tokenizer=tiny_tokenizer, name=name)
        shared = TransformersBackend(model_obj=model, tokenizer=tiny_tokenizer, name=name, shared_prefixes=store)
        for a, b in zip(alone.encode_cache(long_ids).layers, shared.encode_cache(long_ids).layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)  # the same computation
        one = IterativeRanker(alone, RankerConfig(batch_size=4)).rank_many(reqs)
        two = IterativeRanker(shared, RankerConfig(batch_size=4)).rank_many(reqs)
        assert [r.ranking for r in one] == [r.ranking for r in two]
        rankings[name] = [r.ranking for r in one]
    assert rankings["base"] != rankings["tuned"]  # the upper layers are each model's own
    assert store.computed == 1 + len(reqs) and store.reused == store.computed  # once per prefix, for both models
    other = TransformersBackend(model_obj=make_tiny_model(tiny_tokenizer, seed=3), tokenizer=tiny_tokenizer,
                                shared_prefixes=store)
    with pytest.raises(ValueError, match="first 1 layers differ"):
        other.encode_cache(long_ids)
    store.clear()  # a cleared store takes the next model it sees as its reference
    assert store.tokens == 0 and len(other.encode_cache(long_ids).layers) == 2


def test_only_decoders_that_split_cleanly_share_their_lower_layers():
    """`splittable`: full-attention decoders of the known architectures; sliding-window layers would be
    mislabelled in a split cache, and a split run leaves the decoder whole again even when it fails."""
    from conftest import make_tiny_model, make_tiny_tokenizer
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    from iranker.backends.transformers import run_layers, splittable

    assert splittable(LlamaConfig()) and splittable(Qwen2Config())
    assert not splittable(MistralConfig()) and splittable(MistralConfig(sliding_window=None))
    assert not splittable(Qwen2Config(use_sliding_window=True, max_window_layers=1, num_hidden_layers=2))
    decoder = make_tiny_model(make_tiny_tokenizer()).model
    layers, idx = list(decoder.layers), [layer.self_attn.layer_idx for layer in decoder.layers]
    with pytest.raises(RuntimeError), run_layers(decoder, 1, None, final_norm=False, renumber=True):
        assert decoder.layers[0].self_attn.layer_idx == 0 and len(decoder.layers) == 1
        raise RuntimeError("a failure inside the split run")
    assert list(decoder.layers) == layers and [layer.self_attn.layer_idx for layer in layers] == idx
    assert not isinstance(decoder.norm, torch.nn.Identity)
