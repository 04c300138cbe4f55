"""Which float format drafter training and target-state caching compute in (docs/design.md
"Training on the CPU's bf16 units").

A CPU that multiplies bfloat16 natively (Intel AMX, or AVX512-BF16 on Intel and AMD) runs a
bf16 matmul several times faster than a float32 one (measured on the 2-core dev machine, an AMD
EPYC with AVX512-BF16 and no AMX: 4096x576x1536 at 468 vs 85 GFLOP/s on one thread). Without
those instructions oneDNN emulates bf16 and it is slower than float32, so "auto" picks bf16 only
where the CPU reports one of them. Training keeps float32 master weights and optimiser state and
runs the forward under autocast: matmuls and attention in bf16, norms, softmaxes and every loss
in float32 (the losses upcast their inputs).
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "float32", "bfloat16"]
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX or AVX512-BF16). On a system without
    /proc/cpuinfo, torch's own capability string is asked for AMX."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in NATIVE_BF16_FLAGS)
    return "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def compute_dtype(device: torch.device | str, precision: Precision = "auto") -> torch.dtype:
    """The dtype matmuls run in: bf16 on a GPU that has it and on a CPU with native bf16 ("auto"),
    or what `precision` forces. Forcing bf16 where the hardware lacks it is allowed (it is only
    slow); a CUDA device without bf16 is refused."""
    dev = torch.device(device)
    if precision == "float32":
        return torch.float32
    if dev.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            if precision == "bfloat16":
                raise ValueError(f"{torch.cuda.get_device_name(dev)} has no bfloat16; use precision float32")
            return torch.float32
        return torch.bfloat16
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; choose auto, float32 or bfloat16")
    return torch.bfloat16 if dev.type == "cpu" and cpu_native_bf16() else torch.float32


def autocast(device: torch.device | str, precision: Precision = "auto"):
    """The training forward's context: bf16 autocast where `compute_dtype` says bf16, else
    nothing (plain float32)."""
    dev = torch.device(device)
    if compute_dtype(dev, precision) != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)
