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


def test_stream_resumed_in_pieces_equals_one_run(tmp_path, capsys):
    """Stopped after every prompt (--max-minutes) and resumed, the learners go on exactly: the
    records match an uninterrupted run's, and each piece's load average is kept."""
    target = tiny_target_folder(tmp_path / "model")
    argv = ["stream", "--target", str(target), "--domain", "math", "--prompts", "3", "--window", "1",
            "--exit-layer", "1", "--max-new-tokens", "10", "--depth", "2", "--budget", "4", "--tree-top-k", "2",
            "--variants", "kl_rl", "--no-baseline", "--dvi", '{"learning": {"update_every": 3, "kl_updates": 1}}',
            "--no-progress", "--checkpoint-every", "5"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    pieces = [*argv, "--out", str(tmp_path / "pieces"), "--max-minutes", "1e-9"]
    assert main(pieces) == 0
    for _ in range(2):
        assert "continue with --resume" in capsys.readouterr().out
        assert not (tmp_path / "pieces" / "summary.json").exists()
        assert main([*pieces, "--resume"]) == 0
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("whole", "pieces")]
    assert [(p["from"], p["to"]) for p in summaries[1]["pieces"]] == [(0, 1), (1, 2), (2, 3)]
    keys = ("index", "run", "tokens", "steps", "updates", "kl")
    whole, pieced = ([{k: r[k] for k in keys if k in r} for r in map(json.loads, (tmp_path / run / "stream.jsonl")
                      .read_text().splitlines())] for run in ("whole", "pieces"))
    assert whole == pieced and any(r.get("updates") for r in whole)
    assert summaries[0]["runs"]["dvi-kl_rl"]["window"]["tau"] == summaries[1]["runs"]["dvi-kl_rl"]["window"]["tau"]


def test_frozen_runs_on_a_subset_of_the_window(tmp_path):
    """--frozen-prompts 1: early-exit and autoregressive take the last prompt only; the learner's
    τ over those same prompts is reported beside its window τ (a paired ratio)."""
    target = tiny_target_folder(tmp_path / "model")
    out = tmp_path / "run"
    argv = ["stream", "--target", str(target), "--prompts", "3", "--window", "2", "--frozen-prompts", "1",
            "--exit-layer", "1", "--max-new-tokens", "6", "--variants", "kl", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "stream.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records if r["run"] in ("early-exit", "autoregressive")) == [2, 2]
    runs = json.loads((out / "summary.json").read_text())["runs"]
    learned = runs["dvi-kl"]
    assert learned["window"]["prompts"] == 2 and learned["frozen"]["prompts"] == 1
    assert learned["frozen"]["tau_vs_early_exit_paired"] == learned["frozen"]["tau"] / runs["early-exit"]["window"]["tau"]
    assert main([*argv[:-2], "--out", str(tmp_path / "none"), "--frozen-prompts", "0"]) == 0  # learners only
    runs = json.loads((tmp_path / "none" / "summary.json").read_text())["runs"]
    assert set(runs) == {"dvi-kl"} and "tau_vs_early_exit" not in runs["dvi-kl"]["window"]


def test_resume_refuses_changed_settings(tmp_path, capsys):
    target = tiny_target_folder(tmp_path / "model")
    argv = ["stream", "--target", str(target), "--prompts", "2", "--window", "1", "--exit-layer", "1",
            "--max-new-tokens", "4", "--variants", "kl", "--no-baseline", "--no-progress", "--out", str(tmp_path / "r")]
    assert main([*argv, "--resume"]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert main([*argv, "--max-minutes", "1e-9"]) == 0
    assert main([*argv, "--resume", "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert "settings differ" in err and "max_new_tokens" in err


def test_stream_keeps_its_threads_and_takes_tree_auto(tmp_path, monkeypatch):
    """--threads is what the decode runs on, even where the Composer's "auto" policy would take
    every free core; --tree-auto sizes the trees (recorded in the config)."""
    import compose.threads

    monkeypatch.setattr(compose.threads, "free_cores", lambda: 2)
    target = tiny_target_folder(tmp_path / "model")
    out = tmp_path / "run"
    argv = ["stream", "--target", str(target), "--prompts", "2", "--window", "1", "--exit-layer", "1",
            "--max-new-tokens", "6", "--variants", "kl", "--threads", "1", "--tree-auto", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"] == 1 and summary["config"]["tree"]["auto"] is True
    assert summary["greedy_mismatches"] == []


def test_resume_of_a_run_from_before_draft_vocabularies(tmp_path, capsys):
    """A run whose config predates `draft_vocab` had the full head: resuming it with today's
    default ('auto') is refused as a changed setting, with 'full' it goes on."""
    target = tiny_target_folder(tmp_path / "model")
    out = tmp_path / "r"
    argv = ["stream", "--target", str(target), "--prompts", "2", "--window", "1", "--exit-layer", "1",
            "--max-new-tokens", "4", "--variants", "kl", "--no-baseline", "--no-progress", "--out", str(out)]
    assert main([*argv, "--max-minutes", "1e-9", "--dvi", '{"draft_vocab": "full"}']) == 0
    config = json.loads((out / "config.json").read_text())
    del config["dvi"]["draft_vocab"]
    (out / "config.json").write_text(json.dumps(config))
    assert main([*argv, "--resume"]) == 2
    assert "settings differ" in capsys.readouterr().err
    assert main([*argv, "--resume", "--dvi", '{"draft_vocab": "full"}']) == 0
    assert json.loads((out / "summary.json").read_text())["complete"]


def _target(folder):
    from runtime.assets import load_target

    return load_target(str(folder))[0]


@pytest.mark.parametrize("argv, message", [
    (["--prompts", "3", "--window", "5"], "window (5) is longer than the stream"),
    (["--dvi", "{not json"], "--dvi is not valid JSON"),
    (["--variants", "kl,sgd"], "variants"),
    (["--window", "5", "--frozen-prompts", "6"], "longer than the window"),
])
def test_stream_bad_settings(argv, message, capsys):
    assert main(["stream", *argv]) == 2
    assert message in capsys.readouterr().err


def test_stream_config_defaults_match_the_issue():
    config = StreamConfig()
    assert (config.prompts, config.window, config.variants) == (200, 50, ["kl_rl", "kl"])
