"""A built-in model's GGUF re-quantised by llama.cpp (Q8_0, Q4_K_M, ...) for the side-by-side
benchmark, cached under $SPECMUX_HOME/gguf/ (written to a temporary file, then renamed).

The built-in ships as Q4_1; llama.cpp re-quantises it (allow_requantize), so a Q8_0 made here
holds the Q4_1 weights in the Q8_0 format: the speed of the format, not the quality of a Q8_0
made from float weights. Needs llama-cpp-python."""
from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

from runtime.assets import BUILTIN_MODELS, specmux_home
from runtime.model_cache import _join_and_check_source

FTYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_1": None}


def quantized_gguf(name: str, quant: str) -> Path:
    import llama_cpp

    if quant not in FTYPES:
        raise ValueError(f"quantisation must be one of {list(FTYPES)}, got {quant!r}")
    folder = specmux_home() / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{name}.gguf"
    if not source.is_file():
        _atomic(source, lambda tmp: _join_and_check_source(BUILTIN_MODELS[name], tmp))
    if FTYPES[quant] is None:
        return source
    out = folder / f"{name}-{quant}.gguf"
    if not out.is_file():
        def quantize(tmp: Path) -> None:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, FTYPES[quant])
            params.allow_requantize = True
            params.nthread = os.cpu_count() or 1
            if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
                raise RuntimeError(f"llama.cpp could not quantise {source} to {quant}")
        _atomic(out, quantize)
    return out


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
