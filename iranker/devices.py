"""Where a model runs and in which dtype: one rule for training, ranking, evaluation and serving.

`device`: auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda (an error naming the setting when there is
no GPU). `dtype`: auto is bfloat16 on CUDA and float32 on the CPU; bfloat16 can be asked for on a CPU too (this
machine's AVX-512 BF16 runs it ~2x faster; the README's bf16 table says what it changes in the rankings).
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")


def resolve_device(name: str | torch.device | None) -> torch.device:
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for, but torch sees no CUDA GPU (torch "
                         f"{torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA); "
                         "use device=cpu or auto")
    if name not in DEVICES:
        raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {name!r}")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    name = name or "auto"
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
