"""Where three lockstep drafters' time goes, and what sharing their weights would leave (issue 10's
goal: three same-architecture drafters in <= 1.5x one drafter's tree drafting time).

    PYTHONPATH=. python docs/results/lockstep-floor-2026-11-26/floor.py

One torch thread, 256-token context, tree depth 5 / top-k 4 / budget 16, the default drafter and
two copies of it with perturbed layer weights (drafting cost does not depend on the values).
Rows: wall time per tree, then the time inside each part (wall clock around the call; parts
nest: "drafter forward" holds the kernels and the head). "3, sharing every weight" is an
experiment, not a shipped path: every stacked linear runs member 0's weight once over all
members' rows, which is what members that share a body and head would cost at best.
"""
from __future__ import annotations

import collections
import functools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from bench_costs import twin  # noqa: E402
from prompts import load_average  # noqa: E402

import drafters.feature as feature  # noqa: E402
import drafters.model as model  # noqa: E402
import trees.build as build  # noqa: E402
from compose import Composer, default_drafters  # noqa: E402
from compose.costs import measure_levels  # noqa: E402
from compose.lockstep import DraftUnit  # noqa: E402
from drafters import FeatureDrafterGroup, packed  # noqa: E402
from trees import SamplingSpec, TreeSpec  # noqa: E402

SPENT: collections.Counter = collections.Counter()


def timed(owner, attr: str, label: str) -> None:
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - t
    setattr(owner, attr, wrapper)


class TimedKernel:
    def __init__(self, op):
        self.op = op

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.op(*args)
        SPENT["linear kernels"] += time.perf_counter() - t
        return out


def shared_weights(self, x):
    """Experiment: member 0's weight over every member's rows (one kernel)."""
    first = self.members[0]
    return packed.matmul(x.reshape(-1, x.shape[-1]), first.weight, first.bias).view(*x.shape[:-1], first.out_features)


def per_tree(unit: DraftUnit, spec: TreeSpec, n: int = 30) -> tuple[float, dict]:
    for _ in range(3):
        unit.draft(7, spec, SamplingSpec(), None)
    SPENT.clear()
    t = time.perf_counter()
    for _ in range(n):
        unit.draft(7, spec, SamplingSpec(), None)
    return (time.perf_counter() - t) / n * 1e3, {k: v / n * 1e3 for k, v in SPENT.items()}


def main() -> None:
    torch.set_num_threads(1)
    composer = Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"), threads=1)
    name, drafter = next(iter(composer.drafters.items()))
    trio = [drafter, twin(drafter, 1), twin(drafter, 2)]
    one = DraftUnit([name], drafter)
    three = DraftUnit([d.name for d in trio], FeatureDrafterGroup(trio))
    for unit in (one, three):
        measure_levels(composer.target, unit, frontiers=(4,), reps=1)  # a 256-token context
    torch.ops.mkldnn._linear_pointwise = TimedKernel(torch.ops.mkldnn._linear_pointwise)
    timed(torch.nn.functional, "scaled_dot_product_attention", "attention kernel")
    timed(feature._FeatureDrafting, "forward", "drafter forward")
    timed(model.FeatureDrafterModel, "logits", "head")
    timed(build.DynamicBuild, "add_level", "tree: add_level")
    timed(build, "top_children", "tree: softmax/entropy/top-k")
    timed(build.DynamicBuild, "tree", "tree: final budget cut")
    spec = TreeSpec(depth=5, top_k=4, budget=16)
    print(f"load average {load_average()}")
    runs = {"1 drafter": per_tree(one, spec), "3 in lockstep": per_tree(three, spec)}
    original = feature.StackedLinear.forward
    feature.StackedLinear.forward = shared_weights
    runs["3, sharing every weight (experiment)"] = per_tree(three, spec)
    feature.StackedLinear.forward = original
    print(f"load average {load_average()}\n")
    base = runs["1 drafter"][0]
    labels = ["drafter forward", "linear kernels", "head", "attention kernel", "tree: add_level",
              "tree: softmax/entropy/top-k", "tree: final budget cut"]
    print("| ms per tree | " + " | ".join(runs) + " |")
    print("|---|" + "---:|" * len(runs))
    print("| whole tree | " + " | ".join(f"{t:.2f} ({t / base:.2f}x)" for t, _ in runs.values()) + " |")
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{parts.get(label, 0.0):.2f}" for _, parts in runs.values()) + " |")
    for key, (t, parts) in runs.items():
        rest = t - parts["linear kernels"] - parts["attention kernel"]
        print(f"{key}: outside the linear and attention kernels {rest:.2f} ms ({rest / base:.2f}x one drafter's whole tree)")


if __name__ == "__main__":
    main()
