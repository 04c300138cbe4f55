"""The target's dtype: `Composer(dtype="auto" | "float32" | "bfloat16")` (docs/design.md "Exact bf16").

bfloat16 is chosen only where it is both fast and exact: the hardware multiplies it natively
(AMX or AVX512-BF16 on the CPU: bf16 matmuls run 5-10x float32 there) and the kernels the
batch-invariant forward relies on pass their self-check on this machine
(runtime.invariant.check_kernels). Elsewhere "auto" is float32, and an explicit "bfloat16"
is refused with the reason rather than run inexactly."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls run natively (CUDA with bf16; a CPU with AMX or AVX512-BF16)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why a bf16 target would not be fast and exact here (None: it would be)."""
    if not native_bf16(device):
        return f"this {torch.device(device).type} does not multiply bfloat16 natively (no AMX / AVX512-BF16)"
    failed = _kernels_fail(device)
    return None if failed is None else f"the batch-invariant bf16 forward does not hold on this machine: {failed}"


def _kernels_fail(device) -> str | None:
    from .invariant import check_kernels

    return check_kernels(str(torch.device(device)))


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str = "cpu", model_type: str | None = None) -> torch.dtype:
    """"auto" -> bfloat16 where it is fast and exact, else float32; "float32" / "bfloat16" (or
    the torch dtypes) as asked, bfloat16 only where it is exact (ValueError naming why not).
    model_type: the target's family; only the fast decoder's families have a batch-invariant
    bf16 forward (runtime.decoder.SUPPORTED_MODEL_TYPES), so "auto" is float32 for others."""
    if isinstance(dtype, torch.dtype):
        name = {v: k for k, v in DTYPES.items()}.get(dtype)
        if name is None:
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
        dtype = name
    from .decoder import SUPPORTED_MODEL_TYPES

    if dtype == "auto":
        if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:
            return torch.float32
        return torch.bfloat16 if bf16_unavailable(device) is None else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    if dtype == "bfloat16":
        why = bf16_unavailable(device)
        if why is not None:
            raise ValueError(f"dtype='bfloat16' would not be exact here: {why}; use dtype='float32' or 'auto'")
    return DTYPES[dtype]


def require_exact_bf16(device: torch.device | str = "cpu") -> None:
    """For a target already in bfloat16: its forward must be batch-invariant here (speed aside)."""
    failed = _kernels_fail(device)
    if failed is not None:
        raise ValueError(f"a bfloat16 target would not be exact here ({failed}): load it in float32")
