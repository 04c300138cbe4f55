"""`specmux eval stream` end to end on a tiny random target: records, summary, plot, adapters."""
from __future__ import annotations

import json

import pytest

from drafters.dvi import DVIDrafter
from eval.cli import main
from eval.stream import StreamConfig
from eval_helpers import tiny_target_folder
from test_eval_cli import PNG_MAGIC, one_thread  # noqa: F401  (fixture)


def test_stream_end_to_end(tmp_path, capsys):
    target = tiny_target_folder(tmp_path / "model")
    out = tmp_path / "run"
    argv = ["stream", "--target", str(target), "--domain", "math", "--prompts", "4", "--window", "2",
            "--exit-layer", "1", "--max-new-tokens", "8", "--depth", "3", "--budget", "6", "--tree-top-k", "2",
            "--dvi", '{"learning": {"update_every": 1, "kl_updates": 2, "lr": 0.05}}', "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "stream.jsonl").read_text().splitlines()]
    runs = {r["run"] for r in records}
    assert runs == {"dvi-kl_rl", "dvi-kl", "early-exit", "autoregressive"}
    for run in ("dvi-kl_rl", "dvi-kl"):  # the learners see the whole stream, the frozen runs the window
        assert sorted(r["index"] for r in records if r["run"] == run) == [0, 1, 2, 3]
    for run in ("early-exit", "autoregressive"):
        assert sorted(r["index"] for r in records if r["run"] == run) == [2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["greedy_mismatches"] == []
    assert summary["runs"]["dvi-kl_rl"]["learner"]["updates"] > 0
    assert summary["runs"]["early-exit"]["window"]["tau_vs_early_exit"] == 1.0
    assert {"first", "stream", "window"} <= set(summary["runs"]["dvi-kl"])
    assert summary["overlap"]["train_prompts"] == 4
    assert (out / "tau_over_time.png").read_bytes()[:8] == PNG_MAGIC
    for run in ("dvi-kl_rl", "dvi-kl"):
        DVIDrafter(_target(target), 1).load_adapter(out / "adapters" / "math" / run)
    printed = capsys.readouterr().out
    assert "τ over the last 2 prompts" in printed and "x early-exit" in printed


def _target(folder):
    from drafters.assets import load_target

    return load_target(str(folder))[0]


@pytest.mark.parametrize("argv, message", [
    (["--prompts", "3", "--window", "5"], "window (5) is longer than the stream"),
    (["--dvi", "{not json"], "--dvi is not valid JSON"),
    (["--variants", "kl,sgd"], "variants"),
])
def test_stream_bad_settings(argv, message, capsys):
    assert main(["stream", *argv]) == 2
    assert message in capsys.readouterr().err


def test_stream_config_defaults_match_the_issue():
    config = StreamConfig()
    assert (config.prompts, config.window, config.variants) == (200, 50, ["kl_rl", "kl"])
