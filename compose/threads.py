"""How many torch threads a decode uses (docs/design.md "Threads").

On a small machine shared with other busy processes, an intra-op thread per core collapses: each
parallel region waits for its slowest thread, and a thread that shares its core with another
busy process runs a fraction of the time (seen: 4-10x slower with 2 threads beside one busy
process on 2 cores). "auto" uses the cores nobody else is running on, counted from the kernel's
instantaneous run queue (/proc/stat procs_running) at the start of a generation and every
RECHECK_STEPS steps: all cores on a quiet machine, one thread when every other core is busy."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

RECHECK_STEPS = 16


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def own_running() -> int:
    """This process's threads running or runnable right now (at least this one). torch's own
    OpenMP workers spin for a while after each parallel region: counted as other work, they made
    "auto" drop to one thread on a quiet machine every time it looked mid-decode."""
    running = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:  # the thread ended
                continue
            running += stat[stat.rindex(")") + 2] == "R"  # the state follows the command name
    except (OSError, ValueError):
        return 1
    return max(1, running)


def others_running(samples: int = 3) -> int | None:
    """Threads of other processes running or runnable right now (the least of a few readings a
    millisecond apart, so a passing shell command does not count), None where unknown."""
    seen = []
    for i in range(samples):
        try:
            line = next(l for l in Path("/proc/stat").read_text().splitlines() if l.startswith("procs_running"))
            seen.append(max(0, int(line.split()[1]) - own_running()))
        except (OSError, ValueError, StopIteration):
            return None
        if i + 1 < samples:
            time.sleep(0.001)
    return min(seen)


def free_cores() -> int:
    busy = others_running()
    n = cores()
    return n if busy is None else max(1, n - busy)


def default_threads() -> int | str | None:
    """$SPECMUX_THREADS ("auto", "none" or a number), else "auto"."""
    value = os.environ.get("SPECMUX_THREADS", "auto").strip().lower()
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f'SPECMUX_THREADS must be "auto", "none" or an integer >= 1, got {value!r}')


class ThreadPolicy:
    """`threads`: "auto" (the free cores, rechecked as the run goes), an int (fixed), or None
    (leave torch's setting as it is)."""

    def __init__(self, threads: int | str | None = "auto"):
        if threads not in ("auto", None) and not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f'threads must be "auto", None or an integer >= 1, got {threads!r}')
        self.threads = threads
        self.step = 0

    def apply(self) -> None:
        """At the start of a generation (every policy) and every RECHECK_STEPS steps ("auto")."""
        due = self.step == 0 or (self.threads == "auto" and self.step % RECHECK_STEPS == 0)
        self.step += 1
        if self.threads is None or not due:
            return
        want = free_cores() if self.threads == "auto" else self.threads
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
