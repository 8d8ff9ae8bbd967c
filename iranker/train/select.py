"""Choosing a run's checkpoint on validation data - never the test split."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from iranker.train.config import TrainConfig
from iranker.train.loop import Trainer
from iranker.train.modeling import load_model
from iranker.train.pools import load_training_instances


def select_checkpoint(run: str | Path, states: list[Path], pools: int = 64, out: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> dict:
    """Score a run's checkpoints (and the base model) by the exact expected exclusion reward on fixed pools of the
    VALIDATION split, in the layout the run trained in, and write the best checkpoint as a transformers folder
    (`out/final`, default `run/selected/final`). Returns {"scores": {name: probe}, "best", "model", "pools"}."""
    run = Path(run)
    say = log or (lambda m: print(f"[iranker] {m}", file=sys.stderr, flush=True))
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    cfg = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"pools": pools})})
    if not states:
        raise ValueError(f"{run}: no checkpoints to choose from")
    probe = load_training_instances(cfg, split="validation")
    if not probe:
        raise ValueError(f"data: no validation-split instances in {', '.join(cfg.data)} to select a checkpoint on")
    model, tokenizer = load_model(cfg)
    trainer = Trainer(cfg, load_training_instances(cfg), model, tokenizer, Path(out or run / "selected"),
                      progress=False, probe_instances=probe)
    scores: dict[str, dict] = {"random": trainer.probe_random()}
    if cfg.lora.r:
        with trainer.model.disable_adapter():
            scores["base"] = trainer.probe()
    named = {}
    for path in states:
        step = trainer.load_state(Path(path), optimizer=False)
        named[f"step-{step}"] = Path(path)
        scores[f"step-{step}"] = trainer.probe()
        say(f"checkpoint step {step}: validation expected exclusion reward {scores[f'step-{step}']['all']:.4f}")
    best = max(named, key=lambda k: scores[k]["all"])
    trainer.load_state(named[best], optimizer=False)
    trainer.out.mkdir(parents=True, exist_ok=True)
    final = trainer.save_final()
    n_pools = len(trainer.algo.probe_steps)
    (trainer.out / "selection.json").write_text(json.dumps({"best": best, "pools": n_pools, "scores": scores},
                                                           indent=1))
    return {"scores": scores, "best": best, "model": str(final), "pools": n_pools}
