"""What a decode step costs on this machine: the target's forward time for 1..64 query tokens
over a cached context, and one draft level of a drafter (or lockstep group) per frontier size.
tree="auto" (compose/autotree.py) combines them with the running acceptance; the benchmarks print
them. A profile is measured once per machine, target, drafter and thread count, and cached under
$SPECMUX_HOME/costs/ (written atomically). `fixed_profile(profile)` replaces every measured profile
while it is active (tests and reproducible runs: tree="auto" then depends on no timing of this
machine's past)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from pydantic import BaseModel
from scipy.optimize import isotonic_regression

from runtime.atomic import write_json
from trees import DraftTree, SamplingSpec, TreeSpec, pack_tree

from .lockstep import DraftUnit
from .target import TargetModel, drafter_features, layers_read

# every size up to 16, where kernels step at sizes no coarse grid sees (docs/design.md "Measurements behind the code"), then coarser
# 33: the first row count past a packed linear's 32-row tile (runtime.prepacked.ROW_TILE), a step
# in the cost that interpolating between 32 and 48 would smooth away
FORWARD_SIZES = tuple(range(1, 17)) + (20, 24, 32, 33, 48, 64)
FRONTIER_SIZES = (1, 2, 4, 8)
CONTEXT = 256
PROFILE_FORMAT = 12  # 2: linears on packed weights (runtime.prepacked); 3: every forward size to 16, monotone; 4: the bf16 attention's keys with zero partners (runtime/invariant.py); 5: 32-row tiles, size 33 measured; 6: the compiled bf16 attention (runtime/attention_kernel.c); 7: bf16 linears on the AMX kernel (runtime/linear_kernel.c); 8: the bf16 attention's scores from transposed keys; 9: the compiled bf16 layer (runtime/layer_kernel.c); 10: the bf16 attention on AMX tiles (runtime/attention_amx.c); 11: the AMX linears stream both 32-row passes; 12: the kernels' sources and switches in the key (runtime.native.kernels_key: a new kernel is a new profile)


class CostProfile(BaseModel):
    forward_ms: dict[int, float]  # query tokens -> ms of one target forward over CONTEXT cached tokens
    level_ms: dict[int, float]  # frontier size -> ms of one draft level (model, head, tree building)
    root_ms: float  # ms of the first draft level (root + queued committed tokens)

    def forward(self, n: int) -> float:
        return _interpolate(self.forward_ms, n)

    def level(self, frontier: int) -> float:
        return _interpolate(self.level_ms, frontier)


def _interpolate(table: dict[int, float], x: int) -> float:
    """Piecewise-linear in x (flat below the smallest key, linear extrapolation above)."""
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]]
    lo, hi = (keys[-2], keys[-1]) if x >= keys[-1] else next((a, b) for a, b in zip(keys, keys[1:]) if a <= x <= b)
    return table[lo] + (table[hi] - table[lo]) * (x - lo) / (hi - lo)


def median_ms(fn: Callable[[], None], reps: int, warmup: int = 2, before: Callable[[], None] | None = None) -> float:
    """Median ms of fn over `reps` calls after `warmup`; `before` (untimed) runs ahead of each call."""
    times = []
    for i in range(warmup + reps):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


@torch.inference_mode()
def measure_forward(target: TargetModel, sizes=FORWARD_SIZES, context: int = CONTEXT, reps: int = 5) -> dict[int, float]:
    """ms of one target forward of n tree nodes (a chain: the mask path) after `context` tokens.
    Sizes are timed in interleaved rounds (a burst of load hits every size alike), each size's
    lower quartile is kept (load only adds time), and the curve is made non-decreasing in n
    (isotonic regression: a bigger forward never costs less)."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, target.vocab_size, (context,), generator=g)
    target.prefill(prompt, (), capacity=context + max(sizes))
    chains = {n: DraftTree.from_lists(torch.randint(0, target.vocab_size, (n,), generator=g).tolist(), list(range(-1, n - 1)))
              for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for round_ in range(reps + 1):  # the first round warms up
        for n in sizes:
            t = time.perf_counter()
            target.forward_tree(pack_tree(chains[n], context, target.dtype))
            if round_:
                times[n].append(1e3 * (time.perf_counter() - t))
            target.cache.crop(context)
    lower = [statistics.quantiles(times[n], n=4)[0] if len(times[n]) > 1 else times[n][0] for n in sizes]
    return dict(zip(sizes, isotonic_regression(lower).x.tolist()))


@torch.inference_mode()
def measure_levels(target: TargetModel, unit: DraftUnit, frontiers=FRONTIER_SIZES, context: int = CONTEXT,
                   reps: int = 5) -> tuple[float, dict[int, float]]:
    """(ms of the root level, frontier size -> ms of one further level) of a drafter or a
    lockstep group, tree building included, after `context` committed tokens."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, target.vocab_size, (context,), generator=g)
    out = target.prefill(prompt, layers_read([unit.runner]), capacity=context)
    unit.runner.start(prompt, drafter_features(unit.runner, out.hidden_states, slice(None)))
    root = int(out.logits[-1].argmax())

    def draft(f: int, depth: int) -> Callable[[], None]:
        return lambda: unit.draft(root, TreeSpec(depth=depth, top_k=f, budget=f * depth), SamplingSpec(), None)

    one_level = median_ms(draft(1, 1), reps)
    per_level = [max(0.0, median_ms(draft(f, 2), reps) - one_level) for f in frontiers]
    return one_level, dict(zip(frontiers, isotonic_regression(per_level).x.tolist()))  # wider never costs less


def machine_key() -> str:
    return f"{platform.machine()}|{_cpu_name()}|{os.cpu_count()}cpu|{torch.get_num_threads()}thr|torch{torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def profile_path(*parts: str) -> Path:
    """$SPECMUX_COSTS/<digest>.json, default $SPECMUX_HOME/costs/."""
    from runtime.assets import specmux_home

    from runtime.native import kernels_key

    digest = hashlib.sha256("\n".join((machine_key(), str(PROFILE_FORMAT), kernels_key(), *parts)).encode()).hexdigest()[:16]
    folder = os.environ.get("SPECMUX_COSTS")
    return (Path(folder) if folder else specmux_home() / "costs") / f"{digest}.json"


def cached_json(path: Path, measure: Callable[[], dict]) -> dict:
    """The JSON object stored at `path`, measured (and stored atomically) when missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = measure()
    write_json(path, value)
    return value


_FIXED: list[CostProfile] = []  # the innermost fixed_profile() in force, if any


@contextlib.contextmanager
def fixed_profile(profile: CostProfile) -> Iterator[CostProfile]:
    """While active, machine_profile() returns `profile` for every target and drafter and
    measures nothing (nestable)."""
    _FIXED.append(profile)
    try:
        yield profile
    finally:
        _FIXED.pop()


def machine_profile(target: TargetModel, unit: DraftUnit) -> CostProfile:
    """The cost profile of `target` with the drafter (or group) `unit` on this machine: measured
    on first use (seconds), then read from $SPECMUX_HOME/costs/; the fixed profile instead while
    one is in force (fixed_profile)."""
    from drafters.checkpoint import target_fingerprint

    if _FIXED:
        return _FIXED[-1]

    target_key = f"{target_fingerprint(target.model)}|{target.num_layers}|{target.dtype}"
    forward = cached_json(profile_path("forward", target_key), lambda: {str(k): v for k, v in measure_forward(target).items()})
    runner = unit.runner
    drafter_key = f"{runner.architecture_key() if hasattr(runner, 'architecture_key') else type(runner).__name__}|{len(unit.names)}|{_dtype(runner)}"

    def levels() -> dict:
        root, per_frontier = measure_levels(target, unit)
        return {"root_ms": root, "level_ms": {str(k): v for k, v in per_frontier.items()}}

    drafting = cached_json(profile_path("levels", target_key, drafter_key), levels)
    return CostProfile(forward_ms={int(k): v for k, v in forward.items()},
                       level_ms={int(k): v for k, v in drafting["level_ms"].items()}, root_ms=drafting["root_ms"])


def _dtype(runner) -> str:
    model = getattr(runner, "model", None) or getattr(runner, "models", [None])[0]
    return str(next(model.parameters()).dtype) if model is not None else "?"
