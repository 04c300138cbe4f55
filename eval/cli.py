"""`specmux eval` / `python -m eval`: which composition serves my domains best on my target?

With no arguments it runs the main job (see EvalConfig's defaults). Settings come from a JSON or
TOML config file (`--config`, EvalConfig fields) and/or flags; flags win. Exit status: 0 when
every greedy run matched the baseline token for token, 1 when one did not, 2 on bad input."""
from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from compose.options import validation_message

from .config import EvalConfig, load_config_file
from .datasets import BENCHMARKS, MissingBenchmarkPackage


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {e}") from e
    return parse


def _labels(text: str) -> list[str]:
    """Comma-separated strategy labels; commas inside a label's [options] do not split."""
    labels, current, depth = [], "", 0
    for ch in text + ",":
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise argparse.ArgumentTypeError(f"unbalanced brackets in strategy labels {text!r}")
        if ch == "," and depth == 0:
            labels.append(current.strip())
            current = ""
        else:
            current += ch
    if depth:
        raise argparse.ArgumentTypeError(f"unbalanced brackets in strategy labels {text!r}")
    return [label for label in labels if label]


def _drafter(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC (e.g. ee8=early-exit:8), got {text!r}")
    return name, spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specmux eval",
        description="Compare composition strategies per benchmark and temperature against the autoregressive "
                    "baseline measured in the same run. No arguments: the main job (every benchmark, a small "
                    "seeded sample, T = 0 and 1, every registered strategy over the default drafters).",
        epilog="benchmarks: " + "; ".join(f"{b.name} ({b.description})" for b in BENCHMARKS.values())
               + ". `specmux eval stream --help`: a drafter learning online (dvi:K) on a prompt stream, τ over time.",
    )
    p.add_argument("--config", help="JSON or TOML file of EvalConfig fields (flags override it)")
    p.add_argument("--target", help="built-in model name or a local transformers folder")
    p.add_argument("--drafter", dest="drafters", action="append", type=_drafter, metavar="NAME=SPEC",
                   help="a drafter, e.g. ee8=early-exit:8 (repeatable; default: the target's default drafters)")
    p.add_argument("--strategies", type=_labels, metavar="S1,S2",
                   help="strategy labels, e.g. single:ee8,merged_tree,online[probe_every=2] (options in brackets; "
                        "default: every registered strategy)")
    p.add_argument("--benchmarks", type=_csv(str), metavar="B1,B2", help=f"subset of {','.join(BENCHMARKS)}")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--limit", type=int, help="items per benchmark, a fixed seeded subset (default 1)")
    limit.add_argument("--all", action="store_true", help="every item of every selected benchmark")
    p.add_argument("--sample-seed", type=int, help="seed of the --limit subset")
    p.add_argument("--temperatures", type=_csv(float), metavar="T1,T2", help="default 0,1")
    p.add_argument("--seeds", type=_csv(int), metavar="S1,S2", help="sampling seeds (default 0)")
    p.add_argument("--max-new-tokens", type=int, help="per turn (default 32)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--depth", type=int, help="tree depth, levels below the root (fixes the tree; default: tree=auto sizes it)")
    p.add_argument("--budget", type=int, help="draft nodes per drafter tree (fixes the tree; default: auto)")
    p.add_argument("--tree-top-k", type=int, help="children per expanded node (fixes the tree; default: auto)")
    p.add_argument("--merge-budget", choices=["sum", "equal"])
    p.add_argument("--sampled-tree", action="store_true", default=None, help="draw tree children from the drafters")
    p.add_argument("--no-chat", dest="chat", action="store_false", default=None, help="plain-text prompts")
    p.add_argument("--analysis", action="store_true", default=None, help="routing accuracy against the oracle (slow)")
    p.add_argument("--domain-router", help="the domain strategy's classifier file (default: the shipped one)")
    p.add_argument("--calibration", help="starting fits of the calibrated routing signals (default: the shipped ones)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: auto, the cores no other process is running on)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="the target's arithmetic (default auto: bfloat16 where it is fast and exact here, else float32)")
    p.add_argument("--out", help="output folder (default runs/eval-<timestamp>); an existing one resumes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    data = load_config_file(args.config) if args.config else {}
    flags = {
        "target": args.target, "strategies": args.strategies, "benchmarks": args.benchmarks,
        "sample_seed": args.sample_seed, "temperatures": args.temperatures, "seeds": args.seeds,
        "max_new_tokens": args.max_new_tokens, "top_p": args.top_p, "top_k": args.top_k, "chat": args.chat,
        "analysis": args.analysis, "threads": args.threads, "out": args.out, "dtype": args.dtype,
        "domain_router": args.domain_router, "calibration": args.calibration,
        "drafters": dict(args.drafters) if args.drafters else None,
        "limit": args.limit,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.all:
        data["limit"] = None
    tree = {"depth": args.depth, "budget": args.budget, "top_k": args.tree_top_k,
            "merge_budget": args.merge_budget, "sampled": args.sampled_tree}
    tree = {k: v for k, v in tree.items() if v is not None}
    if {"depth", "budget", "top_k"} & set(tree):
        tree["auto"] = False  # a tree shape on the command line fixes the tree
    if tree:  # a flag changes one field of the eval's tree (the config file's, else the eval default)
        base = data.get("tree") or EvalConfig.model_fields["tree"].default_factory().model_dump()
        data["tree"] = {**base, **tree}
    return EvalConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stream"]:  # `specmux eval stream`: a learning drafter on a prompt stream (eval/stream.py)
        from .stream import main as stream_main

        return stream_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from runtime.assets import ModelAssetError

    try:
        config = config_from_args(args)
        from .runner import run_eval  # imports the engine: after the arguments are checked

        outcome = run_eval(config, progress=not args.no_progress)
    except ValidationError as e:
        print(f"specmux eval: error: invalid settings: {validation_message(e)[0]}", file=sys.stderr)
        return 2
    except (MissingBenchmarkPackage, ModelAssetError, ValueError) as e:
        print(f"specmux eval: error: {e}", file=sys.stderr)
        return 2
    if outcome.failures:
        print(f"specmux eval: FAILED: {len(outcome.failures)} greedy run(s) differ from the baseline "
              f"(see {outcome.out_dir / 'summary.json'})", file=sys.stderr)
    return outcome.exit_code
