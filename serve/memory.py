"""Keeping a long-running server's resident memory flat (glibc's allocator; no-ops elsewhere).

`return_freed_memory` (at start): glibc serves allocations over a fixed threshold with mmap and
gives them back when freed. By default glibc raises that threshold to the size of the largest
block freed (up to 32 MiB), after which a server's per-step logits and per-request caches
(megabytes each) come from heaps split between threads, which only grow.

`Trimmer` (as requests leave): what is freed inside those heaps stays resident until glibc is
asked for it: the HTTP thread's and the scheduler's small allocations interleave, and a heap
whose top is held by one live block keeps every free page under it. `malloc_trim(0)` hands the
free pages of every heap back (MADV_DONTNEED), in a few milliseconds, at most once per
`interval` seconds."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time

M_MMAP_THRESHOLD = -3  # glibc mallopt parameters (malloc.h)
M_ARENA_MAX = -8


def _libc():
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """A fixed mmap threshold and two arenas (False where there is no glibc)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_ARENA_MAX, 2))


class Trimmer:
    """`maybe_trim()` gives freed heap pages back to the system, at most once per `interval` s."""

    def __init__(self, interval: float = 1.0):
        self.interval, self._libc, self._last = interval, _libc(), float("-inf")
        self.trims = 0

    def maybe_trim(self) -> bool:
        now = time.monotonic()
        if self._libc is None or now - self._last < self.interval:
            return False
        self._libc.malloc_trim(0)
        self._last = time.monotonic()
        self.trims += 1
        return True
