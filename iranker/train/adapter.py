"""A trained run's LoRA adapter as a small folder to commit and ship (`iranker model export`).

The folder is PEFT's own format (`adapter_config.json`, `adapter_model.safetensors`, stored in bfloat16) with the
ranking settings the run trained under (`iranker-ranking.json`) and a card (`card.json`): the base model, the run's
profile, the checkpoint, and whatever the caller adds (the selection and the result file that chose it). Placed
under `iranker/shipped/NAME`, `--model NAME` loads it (`iranker.models.materialize_shipped`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from iranker.settings import SETTINGS_FILE, write_settings
from iranker.train.config import TrainConfig
from iranker.train.modeling import base_model_path, load_model, lora_config

MAX_ADAPTER_MB = 20  # what the repository takes for a shipped adapter


def read_adapter(folder: str | Path) -> tuple[dict, int]:
    """An adapter folder's LoRA weights (PEFT's keys, as a checkpoint's `policy` holds them) and the checkpoint
    step on its card."""
    from safetensors.torch import load_file

    folder = Path(folder)
    card = folder / "card.json"
    if not (folder / "adapter_model.safetensors").is_file() or not card.is_file():
        raise FileNotFoundError(f"{folder}: expected an adapter folder (adapter_model.safetensors and card.json, "
                                "as `iranker model export` writes)")
    step = json.loads(card.read_text()).get("checkpoint_step")
    if step is None:
        raise ValueError(f"{card}: no checkpoint_step; expected the card `iranker model export` writes")
    return load_file(folder / "adapter_model.safetensors"), step


def export_adapter(run: str | Path, state: str | Path, out: str | Path, card: dict | None = None,
                   dtype: str = "bfloat16") -> Path:
    """Write checkpoint `state` (a `state.pt` of `run`) as a PEFT adapter folder `out`; returns it.

    The ranking settings come from the run's `selected/final` or `final` folder (what training recorded: label
    scheme and alphabet), else the run's profile. Refuses a full fine-tune (no adapter) and an adapter over
    MAX_ADAPTER_MB."""
    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    run, state, out = Path(run), Path(state), Path(out)
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    if not cfg.lora.r:
        raise ValueError(f"{run}: trained without LoRA (lora.r: 0); there is no adapter to export")
    if not state.is_file():
        raise FileNotFoundError(f"--checkpoint {state}: no such file; expected a checkpoint's state.pt")
    model, _ = load_model(cfg)
    peft_model = get_peft_model(model, lora_config(cfg, model))
    if out.exists() and not (out / "adapter_config.json").is_file():
        raise ValueError(f"--out {out}: exists and is not an adapter folder; give a new folder (e.g. "
                         "iranker/shipped/NAME)")
    saved = torch.load(state, weights_only=False, map_location="cpu")
    result = set_peft_model_state_dict(peft_model, saved["policy"])
    lora_keys = {k for k, _ in peft_model.named_parameters() if "lora_" in k}
    if result.unexpected_keys or len(saved["policy"]) != len(lora_keys):
        raise ValueError(f"{state}: its weights do not fit this run's adapter ({len(saved['policy'])} saved, "
                         f"{len(lora_keys)} adapter weights, {len(result.unexpected_keys)} unexpected); was it saved "
                         "by this run?")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.to(getattr(torch, dtype)).save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # PEFT's blank model-card template; card.json says what this is
    config = json.loads((tmp / "adapter_config.json").read_text())
    for folder in (run / "selected" / "final", run / "final"):
        if (folder / SETTINGS_FILE).is_file():
            shutil.copy2(folder / SETTINGS_FILE, tmp / SETTINGS_FILE)
            break
    else:
        write_settings(tmp, cfg.ranking)
    size_mb = sum(f.stat().st_size for f in tmp.iterdir()) / 1e6
    if size_mb > MAX_ADAPTER_MB:
        shutil.rmtree(tmp)
        raise ValueError(f"{state}: the adapter is {size_mb:.1f} MB, over the {MAX_ADAPTER_MB} MB a shipped model "
                         "may take (lower lora.r or lora.top_layers)")
    # the base as `--model` names it: the embedded alias or a hub id as is, a model built in memory by its folder
    base = str(Path(base_model_path(cfg, run)).resolve()) if cfg.model == "tiny-random" else cfg.model
    config["base_model_name_or_path"] = base  # a name `--model` resolves, not this machine's cache path
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    info = {"base": base, "dtype": dtype,
            "checkpoint_step": saved.get("step"), "run": str(run), "checkpoint": str(state),
            "lora": cfg.lora.model_dump(), "size_mb": round(size_mb, 2), **(card or {})}
    (tmp / "card.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
