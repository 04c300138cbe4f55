"""`specmux generate` and `compose.generate()` where users meet them: tree="auto" by default (a
tree shape on the command line fixes the tree), the sampling, seed, chat and drafter flags, the
error exit, and the one-call Python API, on the tiny character-level target."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import compose
import compose.tree_policy
import compose.defaults
from compose import Composer
from eval.commands import main as specmux
from eval_helpers import one_thread, target  # noqa: F401 (fixtures)

DRAFTERS = ["--drafter", "ee1=early-exit:1", "--drafter", "ee2=early-exit:2"]


@pytest.fixture(autouse=True)
def tiny_defaults(monkeypatch):
    """The tiny target has 3 layers: its default early-exit drafters exit after 1 and 2."""
    monkeypatch.setattr(compose.defaults, "EARLY_EXIT_DEFAULTS", {"ee1": "early-exit:1", "ee2": "early-exit:2"})


@pytest.fixture
def profiles_read(monkeypatch):
    """How often a Composer read a cost profile (only tree="auto" does)."""
    calls = []
    real = compose.tree_policy.machine_profile

    def counting(target, unit):
        calls.append(unit.names)
        return real(target, unit)

    monkeypatch.setattr(compose.tree_policy, "machine_profile", counting)
    return calls


def stats_of(output: str) -> dict:
    return json.loads(output[output.index("\n{") + 1:])


def test_generate_sizes_trees_with_auto_by_default(target, capsys, profiles_read):
    assert specmux(["generate", "hello", "--target", str(target), *DRAFTERS, "--max-new-tokens", "24", "--stats"]) == 0
    assert profiles_read == [["ee1"]]  # auto asked for the costs of drafting (the merged strategy's first unit)
    stats = stats_of(capsys.readouterr().out)
    assert stats["strategy"] == "merged_tree" and stats["new_tokens"] == 24


def test_a_tree_shape_on_the_command_line_fixes_the_tree(target, capsys, profiles_read):
    argv = ["generate", "hello", "--target", str(target), *DRAFTERS, "--strategy", "single", "--use", "ee2",
            "--max-new-tokens", "24", "--depth", "2", "--budget", "3", "--tree-top-k", "2"]
    assert specmux(argv) == 0
    assert profiles_read == []  # no auto
    composer = Composer(str(target), drafters={"ee2": "early-exit:2"})
    fixed = composer.generate("hello", strategy="single", drafter="ee2", max_new_tokens=24,
                              tree=dict(depth=2, budget=3, top_k=2))
    assert max(s.tree_size for s in fixed.stats.steps) <= 4
    assert capsys.readouterr().out == fixed.text + "\n"


def test_sampling_flags_and_seed(target, capsys):
    base = ["generate", "hello", "--target", str(target), *DRAFTERS, "--max-new-tokens", "32"]
    outputs = {}
    for seed in ("1", "1", "2"):
        assert specmux([*base, "--temperature", "1.0", "--top-p", "0.9", "--top-k", "40", "--seed", seed]) == 0
        outputs.setdefault(seed, []).append(capsys.readouterr().out)
    assert outputs["1"][0] == outputs["1"][1]  # a seed fixes the sample
    assert outputs["1"][0] != outputs["2"][0]
    composer = Composer(str(target))  # the flags are the generate() options (sampling is lossless: any drafters)
    expected = composer.generate("hello", strategy="autoregressive", max_new_tokens=32, temperature=1.0, top_p=0.9,
                                 top_k=40, seed=1)
    assert len(expected.token_ids) == 32
    assert specmux([*base[:4], "--strategy", "autoregressive", "--max-new-tokens", "32", "--temperature", "1.0",
                    "--top-p", "0.9", "--top-k", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == expected.text + "\n"


def test_chat_flag_applies_the_chat_template(target, capsys):
    argv = ["generate", "hello", "--target", str(target), "--strategy", "autoregressive", "--max-new-tokens", "8"]
    composer = Composer(str(target))
    for extra, chat in (([], False), (["--chat"], True)):
        assert specmux([*argv, *extra]) == 0
        assert capsys.readouterr().out == composer.generate("hello", strategy="autoregressive", max_new_tokens=8,
                                                            chat=chat).text + "\n"
    assert composer.encode("hello", chat=True).tolist() == composer.tokenizer("user: hello\nassistant: ")["input_ids"]


def test_drafter_flag_names_the_drafters(target, capsys):
    argv = ["generate", "hello", "--target", str(target), "--drafter", "mine=early-exit:2", "--max-new-tokens", "12",
            "--depth", "2", "--budget", "3", "--stats"]
    assert specmux(argv) == 0
    stats = stats_of(capsys.readouterr().out)
    assert stats["strategy"] == "single" and set(stats["drafter_shares"]) == {"mine"}


@pytest.mark.parametrize("argv, message", [
    (["--budget", "0"], "tree.budget: Input should be greater than or equal to 1 (got 0)"),
    (["--temperature", "-1"], "temperature: Input should be greater than or equal to 0 (got -1.0)"),
    (["--strategy", "no-such-strategy"], "unknown strategy"),
    (["--drafter", "x=no-such-kind:3"], "drafter"),
    (["--strategy", "single", "--use", "nobody", *DRAFTERS], "unknown drafter 'nobody'"),
])
def test_generate_errors_exit_2_with_a_message(target, capsys, argv, message):
    assert specmux(["generate", "hello", "--target", str(target), "--max-new-tokens", "4", *argv]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("specmux generate: error:") and message in err.splitlines()[-1]


def test_compose_generate_reuses_its_composer_and_honours_the_options(target, monkeypatch, profiles_read):
    monkeypatch.setattr(compose, "_composers", {})
    drafters = {"ee1": "early-exit:1"}
    greedy = compose.generate("hello", target=str(target), drafters=drafters, max_new_tokens=16)
    assert profiles_read == [["ee1"]]  # tree="auto" by default here too
    assert greedy.stats.strategy == "single" and len(greedy.token_ids) == 16
    plain = Composer(str(target)).generate("hello", strategy="autoregressive", max_new_tokens=16)
    assert greedy.token_ids == plain.token_ids  # lossless at T = 0
    again = compose.generate("hello", target=str(target), drafters=drafters, max_new_tokens=16, temperature=1.0, seed=3)
    assert len(compose._composers) == 1  # the loaded Composer was reused
    assert again.token_ids == compose.generate("hello", target=str(target), drafters=drafters, max_new_tokens=16,
                                               temperature=1.0, seed=3).token_ids
    with pytest.raises(ValueError, match="target name or folder"):
        compose.generate("hello", target=plain)


def test_help_and_flag_errors_answer_before_the_model_stack_loads():
    """`specmux --help` and `specmux generate --help` import neither torch nor transformers, and
    a bad generate flag is told (one line, exit 2) before transformers loads: the packages'
    public names load on first use (runtime/lazy.py)."""
    code = ("import sys\nfrom eval.commands import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "print('LOADED', rc, *sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    for argv, rc, loaded in ((["--help"], 0, []), (["generate", "--help"], 0, []),
                             (["generate", "hi", "--budget", "0"], 2, ["torch"])):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parents[1])
        assert done.stdout.splitlines()[-1].split() == ["LOADED", str(rc), *loaded], (argv, done.stdout[-500:], done.stderr[-2000:])
        if rc:
            assert done.stderr.splitlines()[-1] == ("specmux generate: error: tree.budget: Input should be greater "
                                                    "than or equal to 1 (got 0)")
