"""Test isolation: every test run gets its own SPECMUX_HOME, cost-profile folder and thread count,
whatever the environment says; tree="auto" runs on an injected cost profile and on the profile's
time (no timing of this machine enters a test unless it is marked `measured_costs`); Hypothesis is derandomised (its
profile is printed in the header; HYPOTHESIS_PROFILE=explore draws fresh examples)."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings

import trees

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py and friends

# --- one home per test run ---------------------------------------------------------------------
# The xdist controller creates it; its workers inherit the variable and share it (one conversion
# lock, one model cache). Only built-in model conversions are shared with the user's real cache:
# each already converted model is linked in (read, never rewritten: a damaged one is rebuilt in
# the test home, since commit_folder replaces the link), so a run does not spend ~25 s per model.
_SESSION_VAR = "SPECMUX_TEST_SESSION_HOME"
if _SESSION_VAR not in os.environ:
    _real_home = Path(os.environ.get("SPECMUX_HOME") or Path.home() / ".cache" / "specmux").expanduser()
    _home = Path(tempfile.mkdtemp(prefix="specmux-test-home-"))
    (_home / "models").mkdir()
    for _converted in sorted((_real_home / "models").glob("*/specmux-cache.json")):
        (_home / "models" / _converted.parent.name).symlink_to(_converted.parent, target_is_directory=True)
    os.environ[_SESSION_VAR] = str(_home)
    atexit.register(shutil.rmtree, _home, ignore_errors=True)  # the process that made it removes it
TEST_HOME = Path(os.environ[_SESSION_VAR])
os.environ["SPECMUX_HOME"] = str(TEST_HOME)
os.environ["SPECMUX_COSTS"] = str(TEST_HOME / "costs")
# One intra-op thread per test process: the suite runs as 2 xdist workers on 2 cores, and the
# tiny models' ops are so small that cross-thread synchronisation dominates (18x slower per
# generation with 2 threads on a busy 2-core machine). Composers read SPECMUX_THREADS.
os.environ["SPECMUX_THREADS"] = "1"
torch.set_num_threads(1)

# The full O(rows x V) checks of proposal distributions (docs/design.md "Verification rules"):
# off by default for speed, on for every test.
trees.debug_checks(True)

# --- Hypothesis: the same examples on every run and machine ---------------------------------------
settings.register_profile("derandomized", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


# --- tree="auto" on an injected cost profile -----------------------------------------------------
def injected_cost_profile():
    """A machine where drafting pays: a forward of n nodes costs 10 ms + 0.25 ms per extra node,
    one draft level 1-2 ms. tree="auto" then drafts, learns and sizes trees without timing
    anything."""
    from compose.costs import CostProfile

    return CostProfile(forward_ms={1: 10.0, 2: 10.25, 4: 10.75, 8: 11.75, 16: 13.75, 32: 17.75, 64: 25.75},
                       level_ms={1: 1.0, 2: 1.2, 4: 1.5, 8: 2.0}, root_ms=1.0)


def pytest_configure(config):
    config.addinivalue_line("markers", "measured_costs: tree=\"auto\" as on a real machine: its measured cost profile and the real clock")


@pytest.fixture(autouse=True)
def _injected_costs(request, monkeypatch):
    """tree="auto" on the injected profile, and on the profile's time: each step is observed to
    take what the profile predicts for it, so what auto chooses depends on the acceptance alone
    (the same trees, hence the same samples, on every machine and under any load)."""
    if request.node.get_closest_marker("measured_costs"):
        yield None
        return
    from compose.autotree import AutoTree
    from compose.costs import fixed_profile
    from compose.tree_policy import StepTimes

    observe = AutoTree.observe

    def observe_on_profile_time(self, spec, tree, path, times):
        draft_s = self.draft_ms(spec.depth, spec.top_k) / 1e3 if spec is not None else 0.0
        return observe(self, spec, tree, path, StepTimes(draft_s, self.costs.forward(len(tree)) / 1e3, 0.0))

    monkeypatch.setattr(AutoTree, "observe", observe_on_profile_time)
    with fixed_profile(injected_cost_profile()) as profile:
        yield profile


def pytest_report_header(config):
    return [f"specmux tests: SPECMUX_HOME={TEST_HOME} (models linked from the user cache), SPECMUX_THREADS=1, "
            f"injected cost profile, hypothesis profile {settings.get_current_profile_name()!r} "
            f"(derandomize={settings.default.derandomize})"]


def pytest_terminal_summary(terminalreporter, config):
    """The run's order and example seeds, also under -q (which hides the header)."""
    seed = getattr(config.option, "randomly_seed", None)
    order = f"random order: rerun it with --randomly-seed={seed}" if seed is not None else "file order"
    terminalreporter.write_line(f"specmux tests: {order}; hypothesis profile {settings.get_current_profile_name()!r} "
                                f"(derandomize={settings.default.derandomize})")
