"""Shipped models: a run's checkpoint exported as a small LoRA adapter, committed under iranker/shipped/NAME, and
`--model NAME` ranking with it exactly as the checkpoint ranked (the base merged with the adapter, once, cached)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from iranker.train import load_config
from iranker.train.loop import run_training

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture
def lora_run(tmp_path, tiny_model_dir):
    cfg = load_config(SMOKE, {"tokenizer": str(tiny_model_dir), "steps": 2, "checkpoint_every": 2,
                              "lora": {"r": 4, "alpha": 8, "top_layers": 1}})
    run_training(cfg, tmp_path / "run", progress=False)
    return tmp_path / "run"


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    import iranker.models

    folder = tmp_path / "shipped"
    monkeypatch.setattr(iranker.models, "SHIPPED_DIR", folder)
    monkeypatch.setenv("IRANKER_CACHE", str(tmp_path / "cache"))
    return folder


def test_an_exported_adapter_ranks_as_its_checkpoint(lora_run, shipped_dir):
    from iranker.models import materialize_shipped, resolve_model, shipped_card, shipped_models
    from iranker.ranker import open_model, rank_requests
    from iranker.schema import RankRequest
    from iranker.settings import read_settings
    from iranker.train.adapter import export_adapter

    (state,) = (lora_run / "checkpoints").glob("step-*/state.pt")
    out = export_adapter(lora_run, state, shipped_dir / "tiny-ranker", card={"result": "a result file"})
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "card.json",
                                                      "iranker-ranking.json"]
    assert list(shipped_models()) == ["tiny-ranker"]
    card = shipped_card("tiny-ranker")
    assert card["checkpoint_step"] == 2 and card["dtype"] == "bfloat16" and card["result"] == "a result file"
    # the ranking settings travel with the adapter and are read by the shipped name
    assert read_settings("tiny-ranker") == read_settings(lora_run / "final")

    folder = resolve_model("tiny-ranker")
    assert folder == str(materialize_shipped("tiny-ranker"))  # built once, then reused
    # the merged weights are the checkpoint's, up to the adapter's bfloat16 rounding
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(lora_run / "final", dtype=torch.float32).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert trained.keys() == merged.keys()
    worst = max((trained[k] - merged[k]).abs().max().item() for k in trained)
    assert 0 <= worst < 1e-2
    # and the adapter is in them: the merged model is not its base
    base = AutoModelForCausalLM.from_pretrained(lora_run / "init-model", dtype=torch.float32).state_dict()
    assert any(not torch.equal(base[k], merged[k]) for k in base)

    request = RankRequest.model_validate(json.loads((ROOT / "samples" / "request.json").read_text()))
    responses = {}
    for name in ("tiny-ranker", str(lora_run / "final")):
        backend, config = open_model(name)
        responses[name] = rank_requests(backend, [request], config)[0]
    assert responses["tiny-ranker"].model == "tiny-ranker"
    assert responses["tiny-ranker"].ranking == responses[str(lora_run / "final")].ranking


def test_export_refuses_what_it_cannot_ship(tmp_path, lora_run, tiny_model_dir):
    from iranker.train.adapter import export_adapter

    with pytest.raises(FileNotFoundError, match="no such file"):
        export_adapter(lora_run, lora_run / "checkpoints" / "step-000009" / "state.pt", tmp_path / "a")
    full = load_config(SMOKE, {"tokenizer": str(tiny_model_dir), "steps": 2, "checkpoint_every": 2})
    run_training(full, tmp_path / "full", progress=False)
    (full_state,) = (tmp_path / "full" / "checkpoints").glob("step-*/state.pt")
    with pytest.raises(ValueError, match="without LoRA"):
        export_adapter(tmp_path / "full", full_state, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the command line says it in one line
    proc = subprocess.run([sys.executable, "-m", "iranker.cli", "model", "export", str(tmp_path / "full"),
                           "--checkpoint", str(full_state),
                           "--out", str(tmp_path / "c")], check=False, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "without LoRA" in proc.stderr


def test_every_shipped_model_is_small_cites_its_result_and_ranks():
    """What the package ships: each adapter is at most 20 MB, its card names the result file that evaluated it
    (committed, with the same bar verdict), and `--model NAME` loads and ranks a request."""
    from iranker.models import embedded_model_dir, shipped_card, shipped_models
    from iranker.ranker import open_model, rank_requests
    from iranker.schema import RankRequest
    from iranker.train.adapter import MAX_ADAPTER_MB

    shipped = shipped_models()
    assert shipped, "no shipped model (iranker/shipped/NAME)"
    if not (embedded_model_dir() / "config.json").exists():
        pytest.skip("embedded model not pulled: run `iranker model pull` (make test does)")
    request = RankRequest.model_validate(json.loads((ROOT / "samples" / "request.json").read_text()))
    for name, folder in shipped.items():
        assert sum(f.stat().st_size for f in folder.iterdir()) / 1e6 <= MAX_ADAPTER_MB
        card = shipped_card(name)
        result = json.loads((ROOT / card["result"]).read_text())
        assert card["bar_met"] == result["bar_met"]
        backend, config = open_model(name)
        resp = rank_requests(backend, [request], config)[0]
        assert resp.model == name and sorted(resp.ranking) == sorted(c.id for c in request.candidates)
