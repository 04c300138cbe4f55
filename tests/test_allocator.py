"""runtime/allocator.py: after keep_freed_memory(), a large temporary tensor reuses freed memory
instead of faulting in fresh pages every time (glibc)."""
from __future__ import annotations

import platform
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the probe imports runtime from the repository
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")

PROBE = """
import resource, sys, torch
from runtime.allocator import keep_freed_memory
on = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.ones(4096, 4096)  # 64 MB: above the largest mmap threshold glibc picks by itself (32 MB)
for _ in range(3):
    (x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    (x * 2).sum()
print(on, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_temporary(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={"SPECMUX_KEEP_FREED_MEMORY": "1", "PATH": ""}, cwd=ROOT)
    on, faults = out.stdout.split()
    return on == "True", float(faults)


def test_a_large_temporary_reuses_freed_memory():
    on, kept = _faults_per_temporary("keep")
    _, default = _faults_per_temporary("default")
    assert on
    # by default a 64 MB temporary is mapped afresh each time (16,384 pages faulted in); kept
    # memory is reused (at most a rare heap growth)
    assert default > 10_000 and kept < 0.1 * default, (default, kept)
