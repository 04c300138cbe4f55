"""compose/threads.py: the thread policy a Composer applies while generating."""
from __future__ import annotations

import pytest
import torch

from compose import threads as th


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_uses_the_cores_nobody_else_runs_on(monkeypatch):
    monkeypatch.setattr(th, "cores", lambda: 4)
    busy = iter([0, 3, 3, 9])  # quiet, then three busy threads, then more than the cores
    monkeypatch.setattr(th, "others_running", lambda: next(busy))
    monkeypatch.setattr(th, "RECHECK_STEPS", 2)
    policy = th.ThreadPolicy("auto")
    seen = []
    for _ in range(7):
        policy.apply()
        seen.append(torch.get_num_threads())
    assert seen == [4, 4, 1, 1, 1, 1, 1]  # checked at steps 0, 2, 4, 6


def test_fixed_and_untouched_policies():
    torch.set_num_threads(1)
    th.ThreadPolicy(2).apply()
    assert torch.get_num_threads() == 2
    th.ThreadPolicy(None).apply()
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads must be"):
        th.ThreadPolicy(0)


def test_environment_default(monkeypatch):
    for value, want in (("auto", "auto"), ("none", None), ("3", 3)):
        monkeypatch.setenv("SPECMUX_THREADS", value)
        assert th.default_threads() == want
    monkeypatch.setenv("SPECMUX_THREADS", "many")
    with pytest.raises(ValueError, match="SPECMUX_THREADS"):
        th.default_threads()


def fake_proc_stat(monkeypatch, readings):
    """/proc/stat as th.Path reads it: procs_running takes the given values in turn (None: unreadable)."""
    values = iter(readings)

    class FakePath:
        def __init__(self, path):
            assert path == "/proc/stat"

        def read_text(self):
            value = next(values)
            if value is None:
                raise OSError("no /proc here")
            return f"cpu  1 2 3\nprocs_running {value}\nprocs_blocked 0\n"

    monkeypatch.setattr(th, "Path", FakePath)
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    monkeypatch.setattr(th, "own_running", lambda: 1)


def test_run_queue_reading_counts_others(monkeypatch):
    fake_proc_stat(monkeypatch, [4, 2, 3])  # this process is one of the running: the least other count is 1
    assert th.others_running() == 1
    fake_proc_stat(monkeypatch, [1, 1, 1])
    assert th.others_running() == 0
    fake_proc_stat(monkeypatch, [None])
    assert th.others_running() is None


def test_free_cores_are_the_cores_less_the_busy_ones(monkeypatch):
    monkeypatch.setattr(th, "cores", lambda: 4)
    for busy, free in ((0, 4), (1, 3), (3, 1), (9, 1), (None, 4)):
        monkeypatch.setattr(th, "others_running", lambda busy=busy: busy)
        assert th.free_cores() == free


def test_own_spinning_threads_are_not_other_work(monkeypatch):
    """A thread of this process computing (as torch's OpenMP workers spin after a parallel region)
    is this process's work: the run queue less it is what other processes run."""
    import threading

    import torch

    stop = threading.Event()

    def compute():
        a = torch.randn(256, 256)
        while not stop.is_set():
            a @ a  # releases the GIL: runnable the whole time

    worker = threading.Thread(target=compute, daemon=True)
    worker.start()
    try:
        counts = [th.own_running() for _ in range(50)]
    finally:
        stop.set()
        worker.join()
    assert max(counts) >= 2, counts  # this thread and the computing one
    assert th.own_running() >= 1
    fake_proc_stat(monkeypatch, [3, 3, 3])
    monkeypatch.setattr(th, "own_running", lambda: 3)
    assert th.others_running() == 0  # all three running threads are ours
