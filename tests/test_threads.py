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


def test_run_queue_reading_counts_others():
    busy = th.others_running()
    assert busy is None or busy >= 0
    assert 1 <= th.free_cores() <= th.cores()
