"""Freed memory kept for the next tensor (glibc malloc), for the long CPU jobs: training and
state caching.

glibc serves every allocation above its mmap threshold (128 KB to start, raised as blocks are
freed, at most 32 MB) with fresh pages from the kernel and returns them on free, so each large
temporary tensor pays a page fault, and a zeroed page, per 4 KB the first time it is written. A
training step makes hundreds of temporaries of 10-100 MB (a block of the fused head's logits is
16 MB, a layer's activations at batch 16 x 1,000 are 37-98 MB): measured on the AMX VM, three
14.7 MB elementwise temporaries cost 21.8 ms and 10,720 page faults a step by default against
6.6 ms and 143 faults with freed memory kept; a bf16 training step of the shipped recipe ran
1.06-1.11x faster and state caching 1.36-1.47x (docs/results/amx-2026-12-05b). Keeping freed memory means the process's resident
size stays at its peak, which a training or caching process has reached anyway.

`keep_freed_memory()` raises glibc's mmap threshold (so large blocks come from the heap and are
reused), its trim threshold (so the heap is not shrunk after every large free) and its top pad.
It changes malloc for the whole process, once; inference does not call it (decoding allocates
little: 0-7 page faults a token measured). $SPECMUX_KEEP_FREED_MEMORY=0 turns it off.

The kept heap fragments where the large blocks change size from one unit of work to the next
(state caching: each shard's batches and concatenations differ): the suite's `states` stage grew
by ~1 GB a shard and was killed for memory at 24 GB (2026-12-06). `release_freed_memory()`
(glibc's malloc_trim) hands the free pages back between units of work: 1.3-1.5 GB resident
between the first eight chat shards against 2.5-6.4 GB without it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
MMAP_THRESHOLDS = (1 << 30, 32 << 20)  # the first one glibc accepts (older versions cap it at 32 MB)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


@functools.lru_cache(maxsize=None)
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (whose malloc these functions tune), else None."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; True when it took effect (False where the
    C library is not glibc, mallopt refused, or the environment turned it off)."""
    libc = _glibc()
    if os.environ.get("SPECMUX_KEEP_FREED_MEMORY", "1") == "0" or libc is None:
        return False
    if not any(libc.mallopt(M_MMAP_THRESHOLD, value) == 1 for value in MMAP_THRESHOLDS):
        return False
    return libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and libc.mallopt(M_TOP_PAD, TOP_PAD) == 1


def release_freed_memory() -> bool:
    """Return the heap's free pages to the kernel (glibc malloc_trim(0)); between units of work of
    a job that keeps freed memory, so its resident size stays at one unit's peak. True where it ran."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
