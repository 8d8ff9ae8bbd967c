"""Fast-mode labels on real vocabularies: the scheme and the alphabet are decided per tokenizer by probing it where
the label is read.

Real tokenizers, no synthetic stand-ins: Qwen2.5 (../shared/models/qwen2.5-tokenizer, the paper's model family and
the gpu-3b profile's), a Llama-3 vocabulary (from its PyPI wheel) and the embedded SmolLM2. Qwen2.5 and Llama-3
write `[A` as ONE token after the assistant header for 24 letters, but `[O` and `[Q` as `[` + letter; SmolLM2
keeps `[` apart and reads all 26 letters.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys

import httpx
import pytest
import torch
from conftest import ROOT, make_tiny_model

from iranker.backends.openai import OpenAIBackend
from iranker.backends.tokens import MERGED, SPLIT, PromptEncoder
from iranker.prompts import ANSWER_PREFIX, LABELS, TEMPLATES, build_context, iterative_prompt
from iranker.ranker import RankerConfig, rank_requests
from iranker.schema import RankRequest

NO_O_Q = "".join(c for c in string.ascii_uppercase if c not in "OQ")
EXPECTED = {  # tokenizer fixture -> (scheme, fast-mode alphabet)
    "qwen_tokenizer": ("merged", NO_O_Q),
    "llama3_tokenizer": ("merged", NO_O_Q),
    "smollm2_tokenizer": ("split", string.ascii_uppercase),
}
VOCABS = list(EXPECTED)


def passage_request(n: int, qid: str = "q", **options) -> RankRequest:
    return RankRequest(scenario="passage", query=f"query {qid}", options=options,
                       candidates=[{"id": f"{qid}-{i}", "text": f"passage number {i} " + "word " * (i % 5)}
                                   for i in range(n)])


def scenario_request(scenario: str, n: int) -> RankRequest:
    return RankRequest(scenario=scenario, query="q", history=["h"], preference="cost" if scenario == "routing" else None,
                       candidates=[{"id": str(i), "text": f"text {i}"} for i in range(n)])


@pytest.fixture(scope="module", params=VOCABS)
def vocab(request):
    return request.param, request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def qwen_backend(qwen_tokenizer):
    from iranker.backends.transformers import TransformersBackend

    return TransformersBackend(model_obj=make_tiny_model(qwen_tokenizer), tokenizer=qwen_tokenizer, name="qwen-vocab")


def _check_labels_decode_to_their_candidates(enc: PromptEncoder, tokenizer, prompt, ctx, pool: list[int]) -> None:
    """Each label of the prompt is ONE token right where the model writes it, and that token, decoded and read
    back, names the candidate listed under it."""
    e = enc.encode(prompt)
    after = enc.chat_frame(prompt.system)[1]
    assert enc.render(prompt).endswith(after + enc.answer_prefix)
    for j, lab in enumerate(prompt.labels):
        written = tokenizer.encode(prompt.tail + after + ANSWER_PREFIX + lab, add_special_tokens=False)
        assert written == e.tail + [enc.label_ids[lab]], lab
        read = enc.label_of(tokenizer.decode([enc.label_ids[lab]]))
        assert read == lab and prompt.items[prompt.labels.index(read)] == f"[{lab}] {ctx.texts[pool[j]]}\n"


def test_every_label_of_a_20_candidate_pool_decodes_back_to_its_candidate(vocab):
    name, tokenizer = vocab
    scheme, alphabet = EXPECTED[name]
    enc = PromptEncoder(tokenizer)
    assert enc.label_scheme == scheme and enc.scheme == (SPLIT if scheme == "split" else MERGED)
    assert "".join(enc.labels) == alphabet and len(set(enc.label_ids.values())) == len(alphabet)
    assert enc.answer_prefix == ("[" if scheme == "split" else "")
    assert enc.label_texts == {lab: (lab if scheme == "split" else "[" + lab) for lab in alphabet}
    for scenario in TEMPLATES:
        ctx = build_context(scenario_request(scenario, 20))
        # cached layout: the pool is listed once, labelled with the tokenizer's alphabet, and keeps its labels
        first = iterative_prompt(ctx, list(range(20)), alphabet=enc.fast_labels(20))
        assert first.labels == tuple(alphabet[:20]) and first.answer_prefix == ANSWER_PREFIX
        _check_labels_decode_to_their_candidates(enc, tokenizer, first, ctx, list(range(20)))
        # relist layout: after 7 eliminations the remaining 13 are listed afresh, relabelled from the start
        rest = [i for i in range(20) if i % 3 != 1][:13]
        relisted = iterative_prompt(ctx, rest, alphabet=enc.fast_labels(13))
        assert relisted.labels == tuple(alphabet[:13])
        _check_labels_decode_to_their_candidates(enc, tokenizer, relisted, ctx, rest)
        assert enc.render(first).endswith("\n[" if scheme == "split" else "\n")


@pytest.mark.parametrize("layout", ["cached", "relist"])
def test_a_real_vocabulary_ranks_20_candidates_end_to_end(vocab, layout):
    from iranker.backends.transformers import TransformersBackend

    name, tokenizer = vocab
    backend = TransformersBackend(model_obj=make_tiny_model(tokenizer), tokenizer=tokenizer, name=name)
    reqs = [passage_request(20, "a"), passage_request(7, "b")]
    out = rank_requests(backend, reqs, RankerConfig(layout=layout))
    for req, resp in zip(reqs, out):
        assert sorted(resp.ranking) == sorted(c.id for c in req.candidates)
        assert len(resp.eliminated) == len(req.candidates) - 1 and resp.parse_failures == 0
    # the first elimination is the candidate under the label token the model ranks highest at that position
    p = iterative_prompt(build_context(reqs[0]), list(range(20)), alphabet=backend.encoder.labels)
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([backend.encoder.encode(p).ids])).logits[0, -1]
    best = max(p.labels, key=lambda lab: float(logits[backend.encoder.label_ids[lab]]))
    assert out[0].eliminated[0].id == f"a-{p.labels.index(best)}"


def test_reasoning_mode_needs_no_single_token_labels(qwen_backend):
    """Reasoning reads labels from generated text: it labels A..Z (O and Q too) and ranks 26 candidates."""
    p = iterative_prompt(build_context(passage_request(26)), list(range(26)), reasoning=True)
    assert p.labels == LABELS and p.answer_prefix == "" and qwen_backend.encoder.render(p).endswith("assistant\n")
    (resp,) = rank_requests(qwen_backend, [passage_request(26, reasoning=True)],
                            RankerConfig(window=26, stride=10, max_new_tokens=4))
    assert len(resp.ranking) == 26 and len(resp.eliminated) == 25


def test_fast_mode_refuses_only_a_pool_larger_than_the_labels_that_work(qwen_backend):
    (ok,) = rank_requests(qwen_backend, [passage_request(24)], RankerConfig(window=24, stride=10))
    assert len(ok.eliminated) == 23 and ok.parse_failures == 0
    assert len(rank_requests(qwen_backend, [passage_request(40)], RankerConfig(window=24))[0].ranking) == 40
    with pytest.raises(ValueError, match=r"reads only 24 labels as one token \(ABCDEFGHIJKLMNPRSTUVWXYZ\).*'\[O' "
                                         r"after the assistant header is \['\[', 'O'\].*at most 24 candidates; this "
                                         r"one has 25.*reasoning mode"):
        rank_requests(qwen_backend, [passage_request(25)], RankerConfig(window=26, stride=10))


def test_forced_scheme_is_checked(smollm2_tokenizer, qwen_tokenizer):
    assert PromptEncoder(qwen_tokenizer, label_scheme="merged").label_scheme == "merged"
    assert PromptEncoder(smollm2_tokenizer, label_scheme=SPLIT).label_scheme == "split"
    with pytest.raises(ValueError, match=r"label scheme 'merged' reads no label as one token \(merged: label 'A'"):
        PromptEncoder(smollm2_tokenizer, label_scheme="merged")
    forced = PromptEncoder(qwen_tokenizer, label_scheme="split")  # only `[O` and `[Q` are `[` + a letter
    assert forced.labels == ("O", "Q") and forced.unreadable.startswith("split: label 'A': '[A' after")
    with pytest.raises(ValueError, match=r"reads only 2 labels as one token \(OQ\)"):
        forced.fast_labels(3)
    with pytest.raises(ValueError, match="label_scheme: expected one of"):
        PromptEncoder(qwen_tokenizer, label_scheme="bytes")


def test_openai_backend_reads_merged_label_tokens(qwen_backend, qwen_tokenizer, tmp_path):
    from test_backends_remote import StandIn

    qwen_backend.model.save_pretrained(tmp_path)
    qwen_tokenizer.save_pretrained(tmp_path)
    s = StandIn(qwen_backend.model, qwen_tokenizer)
    try:
        remote = OpenAIBackend(s.url, "qwen-vocab", tokenizer=str(tmp_path), allowed_token_ids=True, top_logprobs=24)
        assert remote.encoder.label_scheme == "merged" and "".join(remote.encoder.labels) == NO_O_Q
        assert remote.label_of("[A") == "A" and remote.label_of(" [Z") == "Z"
        assert remote.label_of("A") is None and remote.label_of("[") is None  # not this tokenizer's label tokens
        prompts = [iterative_prompt(build_context(passage_request(n)), list(range(n)), alphabet=NO_O_Q)
                   for n in (3, 20)]
        body = remote.completion_request(prompts[1], 1, 0.0, fast=True)
        assert body["allowed_token_ids"] == [qwen_backend.encoder.label_ids[x] for x in NO_O_Q[:20]]
        assert body["prompt"].endswith("<|im_start|>assistant\n")  # ends where the label token starts
    finally:
        s.close()


def test_vllm_requests_follow_the_tokenizer_alphabet(qwen_tokenizer):
    from iranker.backends.vllm import VLLMBackend

    enc = PromptEncoder(qwen_tokenizer)
    p = iterative_prompt(build_context(passage_request(18)), list(range(18)), alphabet=enc.labels)
    assert p.labels[14:16] == ("P", "R")
    assert VLLMBackend.fast_params(enc, p)["allowed_token_ids"] == [enc.label_ids[x] for x in NO_O_Q[:18]]
    ids = VLLMBackend.token_prompt(enc, p)["prompt_token_ids"]
    assert ids == enc.encode(p).ids
    assert qwen_tokenizer.convert_ids_to_tokens(ids[-1]) == "Ċ"  # the header's newline; `[A` comes next


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "iranker.cli", *args], capture_output=True, text=True, input=stdin,
                          timeout=300, check=False)


def test_a_qwen_vocabulary_model_ranks_from_the_cli_and_the_server_in_both_modes(qwen_backend, qwen_tokenizer,
                                                                                  tmp_path):
    """A model folder with the real Qwen2.5 tokenizer loads and ranks samples/request.json in fast and reasoning
    mode, from `iranker rank` and through `iranker serve` (a tiny random model: the loading path, not quality)."""
    from test_serving import Server

    folder = tmp_path / "qwen-vocab"
    qwen_backend.model.save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    request = json.loads((ROOT / "samples" / "request.json").read_text())
    n = len(request["candidates"])
    for extra in ([], ["--reasoning"]):
        out = _cli("rank", str(ROOT / "samples" / "request.json"), "--model", str(folder), *extra)
        assert out.returncode == 0, out.stderr
        resp = json.loads(out.stdout)
        assert len(resp["eliminated"]) == n - 1 and set(resp["ranking"]) <= {c["id"] for c in request["candidates"]}
    server = Server("--model", str(folder), "--allow-reasoning")
    try:
        for reasoning in (False, True):
            body = {**request, "options": {**request.get("options", {}), "reasoning": reasoning}}
            r = httpx.post(f"{server.url}/v1/models/iranker:predict", json={"instances": [body]}, timeout=120)
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"][0]["eliminated"]) == n - 1
    finally:
        server.close()
