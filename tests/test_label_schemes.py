"""Fast-mode label schemes: decided per tokenizer by probing it where the label is read.

A small BPE with Qwen2.5's pre-tokenizer reproduces Qwen's merge (`[A` is ONE token at the start of a line or a
turn, ` [` + `C` after a space); the conftest tokenizer (GPT-2 style) keeps `[` and the letter apart.
"""

from __future__ import annotations

import string

import pytest
import torch
from conftest import CHAT_TEMPLATE, make_tiny_model

from iranker.backends.openai import OpenAIBackend
from iranker.backends.tokens import MERGED, SPLIT, PromptEncoder
from iranker.prompts import ANSWER_PREFIX, LABELS, TEMPLATES, build_context, iterative_prompt
from iranker.ranker import RankerConfig, rank_requests
from iranker.schema import RankRequest

# Qwen2.5's pre-tokenizer regex (tokenizer.json): a letter run may take ONE leading non-letter, so `[A` is one
# pre-token unless a space precedes the `[` (then ` [` is a punctuation pre-token of its own).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def make_qwen_like_tokenizer(letters: str = string.ascii_uppercase):
    """A byte-level BPE with Qwen2.5's pre-tokenizer whose vocabulary merges `[X` for each of `letters`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = [f"[{c}] the user chose a movie\nwhich passage is the least relevant? Answer e.g. [{c}].\n[{c}]"
              for c in letters] * 30
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def passage_request(n: int, qid: str = "q") -> RankRequest:
    return RankRequest(scenario="passage", query=f"query {qid}",
                       candidates=[{"id": f"{qid}-{i}", "text": f"passage number {i} " + "word " * (i % 5)}
                                   for i in range(n)])


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return make_qwen_like_tokenizer()


@pytest.fixture(scope="module")
def qwen_backend(qwen_tokenizer):
    from iranker.backends.transformers import TransformersBackend

    return TransformersBackend(model_obj=make_tiny_model(qwen_tokenizer), tokenizer=qwen_tokenizer, name="qwen-like")


def _tokens(tokenizer, text):
    return tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))


def test_the_test_tokenizer_merges_like_qwen(qwen_tokenizer):
    assert _tokens(qwen_tokenizer, "<|im_start|>assistant\n[A")[-1] == "[A"  # start of the turn: one token
    assert _tokens(qwen_tokenizer, "\n[Q] passage")[:3] == ["Ċ", "[Q", "]"]  # start of a line: one token
    assert _tokens(qwen_tokenizer, "e.g. [C]")[-3:] == ["Ġ[", "C", "]"]  # after a space: two


@pytest.mark.parametrize("which", ["split", "merged"])
def test_scheme_is_chosen_by_probing_and_every_label_is_one_token_where_it_is_read(
        which, tiny_tokenizer, qwen_tokenizer):
    tokenizer = tiny_tokenizer if which == "split" else qwen_tokenizer
    enc = PromptEncoder(tokenizer)
    assert enc.label_scheme == which and enc.scheme == (SPLIT if which == "split" else MERGED)
    assert enc.answer_prefix == ("[" if which == "split" else "")
    assert sorted(enc.label_ids) == list(LABELS) and len(set(enc.label_ids.values())) == len(LABELS)
    assert enc.label_texts == {lab: (lab if which == "split" else "[" + lab) for lab in LABELS}
    for scenario in TEMPLATES:
        req = RankRequest(scenario=scenario, query="q", history=["h"],
                          preference="cost" if scenario == "routing" else None, candidates=[{"id": str(i), "text": f"text {i}"} for i in range(26)])
        p = iterative_prompt(build_context(req), list(range(26)))
        assert p.answer_prefix == ANSWER_PREFIX
        e = enc.encode(p)
        after = enc.chat_frame(p.system)[1]
        text = enc.render(p)
        assert text.endswith(after + enc.answer_prefix)
        for lab in LABELS:
            # the tail, continued by the label as the model writes it ("[A"), is the tail's ids + the label token
            written = tokenizer.encode(p.tail + after + "[" + lab, add_special_tokens=False)
            assert written == e.tail + [enc.label_ids[lab]]
            assert tokenizer.decode([enc.label_ids[lab]]) == enc.label_texts[lab]
        assert text.endswith("assistant\n[" if which == "split" else "assistant\n")


def test_reasoning_prompts_keep_their_own_answer_prefix(qwen_tokenizer):
    enc = PromptEncoder(qwen_tokenizer)
    p = iterative_prompt(build_context(passage_request(3)), [0, 1, 2], reasoning=True)
    assert p.answer_prefix == "" and enc.render(p).endswith("assistant\n")


@pytest.mark.parametrize("layout", ["cached", "relist"])
def test_a_merging_tokenizer_ranks_end_to_end(qwen_backend, layout):
    assert qwen_backend.encoder.label_scheme == "merged"
    reqs = [passage_request(n, f"q{n}") for n in (7, 12)]
    out = rank_requests(qwen_backend, reqs, RankerConfig(layout=layout))
    for req, resp in zip(reqs, out):
        assert sorted(resp.ranking) == sorted(c.id for c in req.candidates)
        assert len(resp.eliminated) == len(req.candidates) - 1 and resp.parse_failures == 0


@torch.inference_mode()
def test_merged_choice_is_the_model_next_token_after_the_rendered_prompt(qwen_backend, qwen_tokenizer):
    """The fast choice must be read where the model would write `[A`: right after the assistant header."""
    p = iterative_prompt(build_context(passage_request(6)), list(range(6)))
    (choice,) = qwen_backend.choose([p])
    ids = qwen_backend.encoder.encode(p).ids
    assert qwen_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    logits = qwen_backend.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    label_logits = {lab: float(logits[qwen_backend.encoder.label_ids[lab]]) for lab in p.labels}
    assert choice.label == max(label_logits, key=label_logits.get)


def test_forced_scheme_is_checked(tiny_tokenizer, qwen_tokenizer):
    assert PromptEncoder(qwen_tokenizer, label_scheme="merged").label_scheme == "merged"
    assert PromptEncoder(tiny_tokenizer, label_scheme=SPLIT).label_scheme == "split"
    with pytest.raises(ValueError, match=r"merged: label 'A'"):
        PromptEncoder(tiny_tokenizer, label_scheme="merged")
    with pytest.raises(ValueError, match=r"split: label 'A'"):
        PromptEncoder(qwen_tokenizer, label_scheme="split")
    with pytest.raises(ValueError, match="label_scheme: expected one of"):
        PromptEncoder(tiny_tokenizer, label_scheme="bytes")


def test_a_tokenizer_where_no_scheme_works_is_a_clear_error():
    half = make_qwen_like_tokenizer(letters="ABCDEFGHIJKLM")  # `[A`..`[M` merge, `[N`..`[Z` do not
    half.name_or_path = "half-merging"
    with pytest.raises(ValueError, match=r"tokenizer 'half-merging'.*split: label 'A'.*merged: label 'N'.*"
                                         r"reasoning mode"):
        PromptEncoder(half)


def test_openai_backend_reads_merged_label_tokens(qwen_backend, qwen_tokenizer, tmp_path):
    from test_backends_remote import StandIn

    qwen_backend.model.save_pretrained(tmp_path)
    qwen_tokenizer.save_pretrained(tmp_path)
    s = StandIn(qwen_backend.model, qwen_tokenizer)
    try:
        remote = OpenAIBackend(s.url, "qwen-like", tokenizer=str(tmp_path), top_logprobs=len(qwen_tokenizer))
        assert remote.encoder.label_scheme == "merged"
        assert remote.label_of("[A") == "A" and remote.label_of(" [Z") == "Z"
        assert remote.label_of("A") is None and remote.label_of("[") is None  # not this tokenizer's label tokens
        prompts = [iterative_prompt(build_context(passage_request(n)), list(range(n))) for n in (3, 6)]
        got = remote.choose(prompts)
        assert [c.label for c in got] == [c.label for c in qwen_backend.choose(prompts)]
        assert all(c.error is None and set(c.logprobs) == set(p.labels) for c, p in zip(got, prompts))
        assert s.bodies[0]["prompt"].endswith("<|im_start|>assistant\n")  # ends where the label token starts
        body = OpenAIBackend(s.url, "qwen-like", tokenizer=str(tmp_path), allowed_token_ids=True
                             ).completion_request(prompts[0], 1, 0.0, fast=True)
        assert body["allowed_token_ids"] == [qwen_backend.encoder.label_ids[x] for x in "ABC"]
    finally:
        s.close()


def test_openai_backend_without_tokenizer_reads_any_label_spelling():
    remote = OpenAIBackend("http://127.0.0.1:9/v1", "m")
    assert [remote.label_of(t) for t in ("A", " A", "[A", " [A", "[A]", "[", " ")] == ["A"] * 5 + [None, None]


def test_vllm_requests_follow_the_merged_scheme(qwen_tokenizer):
    from iranker.backends.vllm import VLLMBackend

    enc = PromptEncoder(qwen_tokenizer)
    p = iterative_prompt(build_context(passage_request(4)), [0, 1, 2, 3])
    assert VLLMBackend.fast_params(enc, p)["allowed_token_ids"] == [enc.label_ids[x] for x in "ABCD"]
    ids = VLLMBackend.token_prompt(enc, p)["prompt_token_ids"]
    assert ids == enc.encode(p).ids
    assert qwen_tokenizer.convert_ids_to_tokens(ids[-1]) == "Ċ"  # the header's newline; `[A` comes next
