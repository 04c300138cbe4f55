"""The command line with its defaults: `specmux eval --strategies autoregressive,single` runs
`single` once per default drafter; `specmux generate "hi"` runs with the default drafters and
the default strategy."""
from __future__ import annotations

import pytest

import compose.defaults
from eval.commands import main as specmux
from compose.registry import DEFAULT_COMPOSING, default_strategy
from eval.records import RunRecord
from eval_helpers import one_thread, target  # noqa: F401 (fixtures)




@pytest.fixture
def tiny_defaults(monkeypatch):
    """The tiny target has 3 layers: its default early-exit drafters exit after 1 and 2."""
    monkeypatch.setattr(compose.defaults, "EARLY_EXIT_DEFAULTS", {"ee1": "early-exit:1", "ee2": "early-exit:2"})


def test_eval_single_without_a_drafter_runs_once_per_default_drafter(target, tmp_path, tiny_defaults):
    out = tmp_path / "run"
    argv = ["eval", "--target", str(target), "--strategies", "autoregressive,single", "--benchmarks", "gsm8k",
            "--limit", "1", "--temperatures", "0", "--max-new-tokens", "4", "--depth", "2", "--budget", "3",
            "--threads", "1", "--no-progress", "--out", str(out)]
    assert specmux(argv) == 0
    records = [RunRecord.model_validate_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r.strategy for r in records} == {"autoregressive", "single:ee1", "single:ee2"}


def test_eval_rejects_a_drafter_on_a_strategy_that_takes_none(target, tmp_path, tiny_defaults, capsys):
    argv = ["eval", "--target", str(target), "--strategies", "merged_tree:ee1", "--benchmarks", "gsm8k",
            "--limit", "1", "--temperatures", "0", "--max-new-tokens", "2", "--no-progress", "--out", str(tmp_path / "x")]
    assert specmux(argv) == 2
    assert "takes no drafter" in capsys.readouterr().err


def test_generate_with_defaults(target, tiny_defaults, capsys):
    assert specmux(["generate", "hi", "--target", str(target), "--max-new-tokens", "4", "--stats"]) == 0
    out = capsys.readouterr().out
    assert f'"strategy": "{DEFAULT_COMPOSING}"' in out


def test_default_strategy_follows_the_drafters():
    assert default_strategy({}) == "autoregressive"
    assert default_strategy({"a": object()}) == "single"
    assert default_strategy({"a": object(), "b": object()}) == DEFAULT_COMPOSING


def test_generate_hi_with_the_real_defaults(capsys):
    """The real default target and its default drafters (shipped specialists, topped up with
    early-exit drafters), no options but a short length."""
    assert specmux(["generate", "hi", "--max-new-tokens", "3", "--stats"]) == 0
    assert f'"strategy": "{DEFAULT_COMPOSING}"' in capsys.readouterr().out
