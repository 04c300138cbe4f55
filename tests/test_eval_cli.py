"""`specmux eval` end to end on a tiny random target: every output file with its documented
schema, resume, a forced greedy mismatch failing the command, strategy discovery."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval.runner
from compose import Composer
from runtime.target_dtype import resolve_dtype
from compose.registry import STRATEGIES
from compose.strategies import Autoregressive
from routing import Calibration
from eval.cli import build_parser, config_from_args, main
from eval.config import EvalConfig
from eval.plan import parse_label, resolve_strategies
from eval.records import RunRecord
from eval_helpers import one_thread, target  # noqa: F401 (fixtures)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def args_for(target: Path, out: Path, *extra: str) -> list[str]:
    return ["--target", str(target), "--drafter", "d1=early-exit:1", "--drafter", "d2=early-exit:2",
            "--strategies", "single:d1,merged_tree", "--benchmarks", "gsm8k", "--max-new-tokens", "8",
            "--depth", "3", "--budget", "6", "--tree-top-k", "3", "--threads", "1", "--no-progress", "--out", str(out),
            *extra]


def strict_json(path: Path):
    def reject(constant):
        raise ValueError(f"{path.name} is not strict JSON: {constant}")
    return json.loads(path.read_text(), parse_constant=reject)


def result_lines(out: Path) -> list[str]:
    return (out / "results.jsonl").read_text().splitlines()


def test_end_to_end_writes_every_output_and_resumes(target, tmp_path, capsys):
    out = tmp_path / "run"
    argv = args_for(target, out, "--limit", "2", "--temperatures", "0,1")
    assert main(argv) == 0

    for name in ("config.json", "results.jsonl", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    for name in ("tau.png", "acceptance.png", "routing.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name

    # results.jsonl: one record per item x strategy x temperature (2 x 3 x 2)
    records = [RunRecord.model_validate_json(line) for line in result_lines(out)]
    assert len(records) == 12
    assert {r.strategy for r in records} == {"autoregressive", "single:d1", "merged_tree"}
    assert {r.temperature for r in records} == {0.0, 1.0}
    assert len({r.prompt_id for r in records}) == 2
    raw = json.loads(result_lines(out)[0])
    assert raw["schema"] == "specmux-eval-record/1"
    turn = raw["turns"][0]
    assert set(turn) >= {"prompt_tokens", "token_ids", "text", "finish_reason", "new_tokens", "accepted", "tree_sizes",
                         "step_drafters", "accepted_by", "routing", "times"}
    assert set(turn["times"]) == {"prefill", "draft", "verify", "forward", "total"}
    for r in records:
        for t in r.turns:
            assert 1 <= t.new_tokens <= 8 and len(t.accepted) == len(t.tree_sizes) == len(t.step_drafters)
    greedy = {r.strategy: r.turns[0].token_ids for r in records if r.temperature == 0 and r.prompt_id == records[0].prompt_id}
    assert greedy["single:d1"] == greedy["merged_tree"] == greedy["autoregressive"]

    # summary.json: strict JSON, one row per benchmark x temperature x strategy
    summary = strict_json(out / "summary.json")
    assert summary["schema"] == "specmux-eval-summary/1"
    assert summary["strategies"] == ["autoregressive", "single:d1", "merged_tree"]
    assert summary["greedy_check"] == {"records_checked": 4, "mismatches": 0} and summary["failures"] == []
    assert summary["config"]["dtype"] == "auto" and summary["target_dtype"] == str(resolve_dtype("auto"))[6:]
    assert summary["benchmarks"]["gsm8k"]["selected"] == 2 and summary["benchmarks"]["gsm8k"]["total"] == 100
    rows = {(r["benchmark"], r["temperature"], r["strategy"]): r for r in summary["rows"]}
    assert set(rows) == {("gsm8k", t, s) for t in (0.0, 1.0) for s in summary["strategies"]}
    row = rows[("gsm8k", 0.0, "merged_tree")]
    assert set(row) >= {"prompts", "tau", "tokens_per_s", "speedup", "acceptance", "drafter_shares", "routing_shares",
                        "routing_accuracy", "phase_seconds", "ms_per_token", "mean_tree_size"}
    assert row["prompts"] == 2 and row["tau"] >= 1.0 and row["speedup"] > 0
    assert len(row["acceptance"]["unconditional"]) == len(row["acceptance"]["conditional"]) == 3
    assert rows[("gsm8k", 0.0, "autoregressive")]["tau"] == 1.0
    assert rows[("gsm8k", 0.0, "single:d1")]["drafter_shares"] == {"d1": pytest.approx(1.0)}

    report = (out / "report.md").read_text()
    assert f"({summary['target_dtype']})" in report
    assert "### τ and speed" in report and "| gsm8k | merged_tree |" in report and "![tau](tau.png)" in report
    console = capsys.readouterr().out
    assert "T = 0 (greedy): τ / speed-up" in console and "greedy token equality with the baseline: OK" in console

    # a re-run with the same folder generates nothing
    assert main(argv) == 0
    assert len(result_lines(out)) == 12
    assert "(0 new)" in capsys.readouterr().out

    # an interrupted run: two records missing and a half-written last line; only those two are redone
    lines = result_lines(out)
    key = lambda line: (lambda r: (r["prompt_id"], r["strategy"], r["temperature"]))(json.loads(line))
    (out / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:40])
    assert main(argv) == 0
    assert len(result_lines(out)) == 12
    assert "(2 new)" in capsys.readouterr().out
    assert sorted(map(key, result_lines(out)[-2:])) == sorted(map(key, lines[-2:]))  # exactly the two lost ones
    assert sorted(map(key, result_lines(out))) == sorted(map(key, lines))


def test_forced_greedy_mismatch_fails_the_command(target, tmp_path, monkeypatch, capsys):
    real = eval.runner.run_conversation

    def corrupting(composer, item, run, config, temperature, seed, chat, oracle=None):
        turns = real(composer, item, run, config, temperature, seed, chat, oracle)
        if run.label == "single:d1":
            turns[0].token_ids[1] = (turns[0].token_ids[1] + 1) % 128
        return turns

    monkeypatch.setattr(eval.runner, "run_conversation", corrupting)
    out = tmp_path / "run"
    assert main(args_for(target, out, "--limit", "1", "--temperatures", "0")) == 1
    summary = strict_json(out / "summary.json")
    assert summary["greedy_check"]["mismatches"] == 1
    failure = summary["failures"][0]
    assert (failure["strategy"], failure["turn"], failure["position"]) == ("single:d1", 0, 1)
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "GREEDY MISMATCH" in captured.err
    assert "mismatch" in (out / "report.md").read_text()


def test_resuming_with_other_settings_is_refused(target, tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    stored = EvalConfig(target=str(target), drafters={"d1": "early-exit:1"}, max_new_tokens=99)
    (out / "config.json").write_text(stored.model_dump_json())
    assert main(args_for(target, out, "--limit", "1", "--temperatures", "0")) == 2
    assert "other settings" in capsys.readouterr().err


def test_bad_input_exits_2_with_a_clear_error(target, tmp_path, capsys):
    assert main(args_for(target, tmp_path / "a", "--strategies", "telepathy")) == 2
    assert "unknown strategy 'telepathy'" in capsys.readouterr().err
    assert main(["--benchmarks", "mmlu", "--out", str(tmp_path / "b")]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text('benchmarks = ["math"]\nlimit = 5\ntemperatures = [0.0]\n[tree]\ndepth = 2\nbudget = 4\n')
    config = config_from_args(build_parser().parse_args(["--config", str(path), "--budget", "9", "--seeds", "1,2"]))
    assert config.benchmarks == ["math"] and config.limit == 5 and config.temperatures == [0.0]
    assert (config.tree.depth, config.tree.budget) == (2, 9) and config.seeds == [1, 2]
    assert config_from_args(build_parser().parse_args(["--config", str(path), "--all"])).limit is None
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.limit == 1 and defaults.max_new_tokens == 32 and defaults.temperatures == [0.0, 1.0]
    assert defaults.drafters is None and defaults.strategies is None and defaults.tree.auto
    assert defaults.benchmarks == ["mtbench", "gsm8k", "humaneval", "math"]
    # one tree flag changes one field: the others keep the eval's default tree, not TreeOptions'
    equal = config_from_args(build_parser().parse_args(["--merge-budget", "equal"])).tree
    assert (equal.depth, equal.top_k, equal.budget, equal.merge_budget) == (defaults.tree.depth, defaults.tree.top_k,
                                                                            defaults.tree.budget, "equal")


def test_registered_strategies_are_discovered_and_expanded(target, monkeypatch):
    """Every registered strategy runs without changes to eval: per drafter where it takes
    `drafter=`, as is otherwise, skipped with the reason where it cannot run."""
    brand_new = type("BrandNew", (Autoregressive,), {"name": "brand_new"})
    monkeypatch.setitem(STRATEGIES, "brand_new", brand_new)
    composer = Composer(str(target), drafters={"d1": "early-exit:1", "d2": "early-exit:2"})
    config = EvalConfig(target=str(target), max_new_tokens=4, tree=dict(depth=2, budget=4, top_k=2))
    runs, skipped = resolve_strategies(composer, config, chat=True)
    labels = [r.label for r in runs]
    assert "autoregressive" not in labels  # the baseline always runs, separately
    assert {"single:d1", "single:d2", "brand_new"} <= set(labels)
    assert not any(label.startswith("single") and ":" not in label for label in labels)
    for name in set(STRATEGIES) - {"autoregressive", "single", "brand_new"}:
        assert name in labels or name in skipped  # nothing silently dropped
    if "averaged" in STRATEGIES:  # early-exit drafters of different depths cannot be averaged
        assert "averaged" in skipped and "architecture" in skipped["averaged"]


def test_strategy_labels_carry_options_in_brackets(target, tmp_path, capsys):
    """"online[probe_every=2,probe_tree=leader]" runs online with those options under that label;
    commas inside brackets do not split --strategies; unknown options are refused."""
    config = config_from_args(build_parser().parse_args(
        ["--strategies", "single:d1,online[probe_every=2,probe_tree=leader],single[drafter=d2]"]))
    assert config.strategies == ["single:d1", "online[probe_every=2,probe_tree=leader]", "single[drafter=d2]"]
    assert parse_label("online[probe_every=2,probe_tree=leader]") == ("online", "", {"probe_every": 2,
                                                                                    "probe_tree": "leader"})
    composer = Composer(str(target), drafters={"d1": "early-exit:1", "d2": "early-exit:2"})
    config = EvalConfig(target=str(target), strategies=config.strategies, max_new_tokens=4,
                        tree=dict(depth=2, budget=4, top_k=2))
    runs, _ = resolve_strategies(composer, config, chat=True)
    online = next(r for r in runs if r.name == "online")
    assert online.label == "online[probe_every=2,probe_tree=leader]"
    assert online.options == {"probe_every": 2, "probe_tree": "leader"}
    with pytest.raises(ValueError, match="takes no option"):
        parse_label("online[telepathy=1]")
    assert main(args_for(target, tmp_path / "a", "--strategies", "online[telepathy=1]")) == 2
    assert "takes no option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--strategies", "online[probe_every=2"])


def test_analysis_mode_scores_routing_against_the_oracle(target, tmp_path):
    out = tmp_path / "run"
    assert main(args_for(target, out, "--strategies", "confidence,single:d1", "--limit", "1", "--temperatures", "0",
                         "--analysis")) == 0
    records = {r.strategy: r for r in map(RunRecord.model_validate_json, result_lines(out))}
    routed = records["confidence"].turns[0]
    assert routed.oracle is not None and len(routed.oracle) == len(routed.accepted)
    for chosen, accepted, options in zip(routed.step_drafters, routed.accepted, routed.oracle):
        assert set(options) == {"d1", "d2"}
        assert options[chosen] == accepted  # replaying the chosen drafter alone accepts what the run accepted
    assert records["single:d1"].turns[0].oracle is None  # pinned to one drafter: nothing to route
    row = next(r for r in strict_json(out / "summary.json")["rows"] if r["strategy"] == "confidence")
    accuracy = row["routing_accuracy"]
    # recomputed from the records: a step is right when the routed drafter accepts the most there;
    # a turn when its most chosen drafter accepts the most summed over the turn
    turns = records["confidence"].turns
    steps = [(c, o) for t in turns for c, o in zip(t.step_drafters, t.oracle)]
    assert accuracy["steps"] == len(steps) == len(routed.accepted)
    assert accuracy["accuracy"] == pytest.approx(sum(o[c] == max(o.values()) for c, o in steps) / len(steps))
    assert accuracy["oracle_tau"] == pytest.approx(sum(max(o.values()) + 1 for _, o in steps) / len(steps))
    assert accuracy["oracle_tau"] >= accuracy["routed_tau"] == pytest.approx(row["tau"])
    right_turns = 0
    for t in turns:
        totals = {d: sum(o[d] for o in t.oracle) for d in ("d1", "d2")}
        most_chosen = max(dict.fromkeys(t.step_drafters), key=t.step_drafters.count)  # ties: the first chosen
        right_turns += totals[most_chosen] == max(totals.values())
    assert accuracy["turns"] == len(turns) and accuracy["turn_accuracy"] == pytest.approx(right_turns / len(turns))
    report = (out / "report.md").read_text()
    assert "Routing against the oracle" in report and "accuracy per turn" in report
    assert set(Calibration.load(out / "calibration.json").observations("confidence")) == {"d1", "d2"}
    assert (out / "routing.png").read_bytes()[:8] == PNG_MAGIC


def test_dtype_flag_runs_and_reports_that_dtype(target, tmp_path, capsys):
    out = tmp_path / "f32"
    assert main(args_for(target, out, "--dtype", "float32", "--temperatures", "0")) == 0
    summary = strict_json(out / "summary.json")
    assert summary["config"]["dtype"] == "float32" and summary["target_dtype"] == "float32"
    assert "target dtype float32 (asked: float32)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses a dtype it does not offer
        main(args_for(target, tmp_path / "bad", "--dtype", "float16"))
    assert exit_info.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err


def test_eval_runs_with_its_default_tree_auto(target, tmp_path, capsys):
    """No tree flag: the eval's default tree="auto" sizes every step's tree (on the injected cost
    profile, tests/conftest.py), greedy output still equals the baseline's."""
    out = tmp_path / "auto"
    argv = ["--target", str(target), "--drafter", "d1=early-exit:1", "--drafter", "d2=early-exit:2",
            "--strategies", "single:d1,merged_tree", "--benchmarks", "gsm8k", "--max-new-tokens", "16", "--limit", "1",
            "--temperatures", "0,1", "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = strict_json(out / "summary.json")
    assert summary["config"]["tree"]["auto"] is True
    assert summary["greedy_check"] == {"records_checked": 2, "mismatches": 0} and summary["failures"] == []
    records = [RunRecord.model_validate_json(line) for line in result_lines(out)]
    drafted = [size for r in records if r.strategy != "autoregressive" for t in r.turns for size in t.tree_sizes]
    assert max(drafted) > 1  # auto drafted trees (not only the root)
    assert "greedy token equality with the baseline: OK" in capsys.readouterr().out
