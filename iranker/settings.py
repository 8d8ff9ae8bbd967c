"""Ranking settings: the one set of choices under which a model ranks, saved with every trained model.

Training, evaluation, the promotion gate and the server must rank under the same settings - the prompt template's
version, the fast-mode layout, words and tokens shown per candidate, the pool (window) size and its stride, and the
label scheme the tokenizer reads labels with. A trained model folder carries them in `iranker-ranking.json`;
`rank`, `evaluate`, the pipeline's evaluate and promote steps and `serve` read them with `settings_for(model)`, and
an explicit flag that differs is used, with a warning naming the setting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iranker.prompts import DEFAULT_MAX_WORDS, MAX_POOL

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "iterative-v3"  # bump when TEMPLATES, the label format or the cue change
SETTINGS_FILE = "iranker-ranking.json"


class RankingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(default=TEMPLATE_VERSION, description="prompt template version")
    layout: Literal["cached", "relist"] = Field(
        default="cached", description="fast mode: list the pool once and mask eliminated candidates (cached), "
                                      "or re-list the remaining pool relabelled at every step (relist)")
    max_words: int = Field(default=DEFAULT_MAX_WORDS, ge=1, description="words shown per candidate text")
    max_item_tokens: int = Field(default=192, ge=8, description="tokens per candidate line (after the word cap)")
    window: int = Field(default=20, ge=2, le=MAX_POOL, description="most candidates in one prompt (the pool)")
    stride: int = Field(default=10, ge=1, description="how far a sliding window moves up on longer lists")
    label_scheme: str | None = Field(default=None, description="how the tokenizer reads labels (recorded by "
                                                               "training; decided per tokenizer)")
    templates_k: int = Field(default=0, ge=0,
                             description="thought templates shown with each request from the model's own store "
                                         "(its thoughts/ folder, kept by reasoning-mode training; 0: none)")
    labels: str | None = Field(default=None, pattern="^[A-Z]*$",
                               description="fast mode's label alphabet: the letters the tokenizer reads as one token "
                                           "(recorded by training; decided per tokenizer)")

    @model_validator(mode="after")
    def _stride_fits(self) -> RankingSettings:
        if self.stride > self.window:
            raise ValueError(f"stride: must not exceed window ({self.window}), got {self.stride}")
        return self


def model_folder(model: str | Path) -> Path:
    """Where a model's files are: a shipped model's folder for its name, else the path given."""
    from iranker.models import shipped_models

    shipped = shipped_models()
    return shipped[model] if isinstance(model, str) and model in shipped else Path(model)


def read_settings(model: str | Path | None) -> RankingSettings | None:
    """The settings saved with a trained model folder or a shipped model's name, or None (base models, hub ids)."""
    if model is None:
        return None
    path = model_folder(model) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return RankingSettings.model_validate(json.loads(path.read_text()))
    except ValueError as e:
        raise ValueError(f"{path}: not valid ranking settings ({str(e).splitlines()[0]})") from None


def write_settings(folder: str | Path, settings: RankingSettings) -> Path:
    path = Path(folder) / SETTINGS_FILE
    path.write_text(json.dumps(settings.model_dump(), indent=1) + "\n")
    return path


def settings_for(model: str | Path | None, explicit: dict | None = None,
                 warn: Callable[[str], None] | None = None) -> RankingSettings:
    """The settings to rank `model` with: those saved with it (else the defaults), with `explicit` values (flags a
    user gave; None = not given) taking precedence - each one that differs from the saved value is warned about."""
    saved = read_settings(model)
    base = saved or RankingSettings()
    given = {k: v for k, v in (explicit or {}).items() if v is not None}
    say = warn or log.warning
    if saved is not None:
        for key, value in given.items():
            if getattr(saved, key) != value:
                say(f"{key}={value!r} differs from the {getattr(saved, key)!r} the model was trained with "
                    f"({Path(str(model)) / SETTINGS_FILE}); ranking with {value!r}")
    return RankingSettings.model_validate({**base.model_dump(), **given}) if given else base
