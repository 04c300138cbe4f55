"""The compiled exact bf16 attention (runtime/attention_kernel.c; docs/design.md "Exact bf16"),
and the build of every compiled kernel (`load_library`, also used by runtime/native_linear.py).

The kernel (C: a vector path any x86-64 compiler targets, and an AMX tile path in
runtime/attention_amx.c taken where the CPU and OS allow it: `tile_path`) is compiled on first use with the system's C compiler for the
running CPU (-march=native) into $SPECMUX_HOME/kernels/<digest>/ (written whole: compiled to a
temporary name, then renamed), and called through ctypes. The digest covers the source, the
compiler command, the compiler's version and the CPU's flags, so a home shared between machines
never loads a library built for another CPU.

Large calls (a tree, a prefill) run on torch's threads: the kernel is built with -fopenmp, and
the dynamic loader resolves its libgomp.so.1 to the one torch has already loaded (same soname),
so its parallel loops use torch's OpenMP pool and thread count rather than a second pool.
`openmp_runtimes()` lists the libgomp files mapped in the process (tests check there is one).

Where no C compiler is found (or SPECMUX_NATIVE_ATTENTION=0), `attention_kernel()` is None: a
bf16 target is then not exact here, so dtype="auto" runs float32 and dtype="bfloat16" is refused
with that reason (runtime/target_dtype.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("attention_kernel.c")
FLAGS = ["-O3", "-march=native", "-fno-fast-math", "-fopenmp", "-fPIC", "-shared"]
# below this many (query row, head, key) triples a call runs on one thread: waking the pool
# costs more than it saves on a one-token forward (9 heads x 300 keys)
PARALLEL_WORK = 32_768
SCORE_ROWS = 8  # (row, head) pairs of one kv head per task: attention_kernel.c's BLOCK, its score rows
ENV_SWITCH = "SPECMUX_NATIVE_ATTENTION"  # "0": no kernel (a bf16 target is then not exact: auto runs float32)


class KernelBuildError(RuntimeError):
    """A C compiler was found but the kernel did not compile or load."""


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() + platform.machine()


def _library_path(cc: str, source: Path) -> Path:
    from .assets import specmux_home

    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    texts = [p.read_text() for p in _sources(source)]
    digest = hashlib.sha256("\0".join([*texts, cc, *FLAGS, version, _cpu_flags()]).encode()).hexdigest()
    return specmux_home() / "kernels" / digest[:16] / f"{source.stem}.so"


def _sources(source: Path) -> list[Path]:
    """`source` and the local files it includes (`#include "x.c"`), recursively: a change to any
    of them is a new library."""
    seen: list[Path] = []
    todo = [source]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += [p.with_name(name) for name in re.findall(r'^#include "([^"]+)"', p.read_text(), flags=re.M)]
    return seen


def kernels_key() -> str:
    """What decides how fast the compiled kernels run here: their sources (runtime/*.c, *.h), the
    compiler flags and the switches that turn kernels off. Cost profiles measured with other
    kernels are stale (compose/costs.py keys them by this)."""
    switches = [f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith("SPECMUX_NATIVE") or k in ("SPECMUX_PREPACK", "SPECMUX_WEIGHT_FORMATS")]
    return hashlib.sha256("\0".join([_sources_digest(), *switches]).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _sources_digest() -> str:
    here = Path(__file__).parent
    texts = [p.read_text() for p in sorted([*here.glob("*.c"), *here.glob("*.h")])]
    return hashlib.sha256("\0".join([*texts, *FLAGS]).encode()).hexdigest()


def _build(cc: str, source: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        done = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(source), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelBuildError(f"compiling {source.name} with {cc} failed:\n{done.stderr.strip()}")
        os.replace(tmp, path)  # whole or not at all: a concurrent build renames the same bytes
    finally:
        tmp.unlink(missing_ok=True)


def load_library(source: Path) -> ctypes.CDLL | None:
    """`source` compiled for this CPU (built on first use, cached under $SPECMUX_HOME/kernels),
    or None where no C compiler exists. A compiler that fails raises KernelBuildError."""
    cc = _compiler()
    if cc is None:
        return None
    path = _library_path(cc, source)
    if not path.exists():
        _build(cc, source, path)
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise KernelBuildError(f"loading {path}: {e} (delete the file to rebuild it)") from e


@functools.lru_cache(maxsize=None)
def attention_kernel() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use), or None where it is switched off or no C
    compiler exists. A compiler that fails raises KernelBuildError."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    lib = load_library(SOURCE)
    if lib is None:
        return None
    fn = lib.invariant_attention
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    fn.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ptr, i64, ptr, i32, i32, i32, i32, i32, ctypes.c_float, i32, ptr]
    fn.restype = ctypes.c_int
    return lib


def tile_path() -> bool:
    """Whether the kernel's calls take its AMX tile path (runtime/attention_amx.c) here: built for
    a CPU with AMX, allowed by the OS and not switched off by `vector_path`."""
    lib = attention_kernel()
    return lib is not None and bool(lib.attention_on_amx())


@contextlib.contextmanager
def vector_path():
    """Calls inside take the vector path even where AMX is there, in the attention library and
    in the compiled layer's copy of the kernel (tests and benchmarks compare both paths; a
    process must not mix paths in one decode: their bits differ)."""
    from .native_layer import layer_kernel

    lib = attention_kernel()
    if lib is None:
        raise RuntimeError("the compiled attention kernel is not available (runtime.native.attention_kernel)")
    flags = [ctypes.c_int.in_dll(kernel, "attention_use_amx") for kernel in (lib, layer_kernel()) if kernel is not None]
    before = [flag.value for flag in flags]
    for flag in flags:
        flag.value = 0
    try:
        yield
    finally:
        for flag, value in zip(flags, before):
            flag.value = value


def native_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """q [1, H, n, hd], keys/values [1, KV, S, hd] (bf16 on the CPU, head dim contiguous), mask
    additive [n, S] or None -> [n, H, hd] bf16 (contiguous), by the compiled kernel."""
    lib = attention_kernel()
    if lib is None:
        raise RuntimeError("the compiled attention kernel is not available (runtime.native.attention_kernel)")
    _, heads, n, hd = q.shape
    kv, s = keys.shape[1], keys.shape[2]
    q, keys, values, mask = kernel_inputs(q, keys, values, mask, torch.bfloat16)
    out = torch.empty(n, heads, hd, dtype=torch.bfloat16)
    threads = torch.get_num_threads() if n * heads * s >= PARALLEL_WORK else 1
    width = -(-hd // 16) * 16
    # the vector path's work area: every kv head's widened keys and values, then SCORE_ROWS rows of
    # scores per thread (attention_kernel.c); the tile path keeps its own buffers
    work = None if lib.attention_on_amx() else torch.empty((2 * kv * width + SCORE_ROWS * threads) * (s + 16), dtype=torch.float32)
    status = lib.invariant_attention(
        q.data_ptr(), q.stride(1), q.stride(2), keys.data_ptr(), values.data_ptr(), keys.stride(1), keys.stride(2),
        None if mask is None else mask.data_ptr(), 0 if mask is None else mask.stride(0), out.data_ptr(),
        heads, kv, n, s, hd, scale, threads, None if work is None else work.data_ptr())
    if status == -1:
        raise ValueError("a query row of the bf16 attention sees no key (its mask hides every key)")
    if status == -2:
        raise ValueError(f"head dim {hd} is over the 256 the compiled bf16 attention takes")
    if status == -4:
        raise MemoryError("the compiled bf16 attention could not allocate its buffers")
    return out


def kernel_inputs(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                  dtype: torch.dtype) -> tuple:
    """q, keys, values and mask as the compiled attention kernels read them: head dims
    contiguous, keys and values at the same strides, the mask in `dtype` with unit column stride."""
    if q.stride(3) != 1:
        q = q.contiguous()
    if keys.stride(3) != 1 or keys.stride() != values.stride():
        keys, values = keys.contiguous(), values.contiguous()
    if mask is not None:
        mask = mask.to(dtype)
        if mask.stride(1) != 1:
            mask = mask.contiguous()
    return q, keys, values, mask


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes (libgomp) mapped into this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in maps if "libgomp" in line and "/" in line})
