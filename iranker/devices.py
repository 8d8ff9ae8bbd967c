"""Where a model runs and in which dtype: one rule for training, ranking, evaluation and serving.

`device`: auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda (an error naming the setting when there is
no GPU). `dtype`: auto is bfloat16 on CUDA and float32 on the CPU for ranking; for training (`training_dtype`) auto
is bfloat16 also on a CPU that computes it natively (AMX or AVX-512 BF16: 1.8x float32 for the `cpu` profile's
training on such a machine, benchmarks/results/bench_train_stages_bf16.json vs _float32.json) and float32 elsewhere
(AVX2 only: bf16 is emulated there). `cpu_info()` is what result files record about the CPU.
"""

from __future__ import annotations

from pathlib import Path

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


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_info() -> dict:
    """The CPU's model name, core count and the flags that decide the training dtype (recorded in result files)."""
    import os
    import platform

    flags, model = set(), platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "model name" and value.strip():
            model = value.strip()
    simd = sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "fma")
    return {"model": model, "cpus": os.cpu_count(), "simd_flags": simd,
            "native_bf16": any(f in flags for f in NATIVE_BF16_FLAGS)}


def training_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The training compute dtype: `auto` is bfloat16 on CUDA and on a CPU with native bf16 (`cpu_info`),
    float32 elsewhere; an explicit dtype is kept."""
    if (name or "auto") == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_info()["native_bf16"] else torch.float32
    return resolve_dtype(name, device)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    name = name or "auto"
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
