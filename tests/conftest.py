"""Shared fixtures: a tiny random causal LM with a tokenizer trained on the spot, and the shared public data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("IRANKER_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLES = ROOT / "samples" / "instances.jsonl"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def free_port() -> int:
    """A free TCP port on loopback, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the user chose a movie", "which passage is the least relevant to the search query",
              "vaccines train the immune system", "route the query to a cheap model", "answer think label"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_backend(tiny_tokenizer):
    from iranker.backends.transformers import TransformersBackend

    return TransformersBackend(model_obj=make_tiny_model(tiny_tokenizer), tokenizer=tiny_tokenizer, name="tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """The tiny model saved as a transformers folder, for the CLI."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"public data not found at {SHARED_DATA} (set IRANKER_SHARED_DATA)")
    return SHARED_DATA


def dl19(shared: Path, depth: int = 100):
    """[(qid, query, [(docid, text, first-stage score)])] and qrels {qid: {docid: grade}} of TREC DL 2019,
    read by the trec-dl adapter."""
    from iranker.data import build

    built = build("trec-dl", shared / "passage", {"first_stage": "*bm25*", "depth": str(depth)})
    hits = built.tables["first_stage"].sort_values(["qid", "rank"], kind="stable")
    by_q = {q: g.head(depth) for q, g in hits.groupby("qid", sort=False)}
    runs = [(q, query, list(zip(by_q[q]["docid"], by_q[q]["text"], by_q[q]["score"], strict=True)))
            for q, query in built.tables["queries"].itertuples(index=False)]
    qrels: dict[str, dict[str, int]] = {}
    for q, d, g in built.tables["qrels"].itertuples(index=False):
        qrels.setdefault(q, {})[d] = int(g)
    return runs, qrels
