import os
import sys
import tempfile

import torch

import trees

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py and friends
# One intra-op thread per test process: the suite runs as 2 xdist workers on 2 cores, and the
# tiny models' ops are so small that cross-thread synchronisation dominates (18x slower per
# generation with 2 threads on a busy 2-core machine).
torch.set_num_threads(1)
os.environ.setdefault("SPECMUX_THREADS", "1")  # Composers keep to it (their default is "auto")
# tree="auto" (the default) measures each tiny model's costs once: keep those profiles out of the home folder
os.environ.setdefault("SPECMUX_COSTS", tempfile.mkdtemp(prefix="specmux-test-costs-"))

# The full O(rows x V) checks of proposal distributions (docs/design.md "Verification rules"):
# off by default for speed, on for every test.
trees.debug_checks(True)
