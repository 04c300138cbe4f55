"""`specmux` command line: generate | eval | train | models."""
from __future__ import annotations

import argparse
import json
import sys


def _generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="specmux generate", description="Generate text with a composition strategy.")
    p.add_argument("prompt", help="prompt text (use --chat to apply the chat template)")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--drafter", action="append", default=[], metavar="NAME=SPEC",
                   help="a drafter, e.g. ee=early-exit:8 (repeatable)")
    p.add_argument("--strategy", default=None,
                   help="composition strategy (default: merged_tree with several drafters, single with one)")
    p.add_argument("--use", dest="use_drafter", default=None, help="drafter name for --strategy single")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--budget", type=int, default=32)
    p.add_argument("--tree-top-k", type=int, default=8)
    p.add_argument("--merge-budget", choices=["sum", "equal"], default="sum")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--stats", action="store_true", help="print generation statistics as JSON")
    args = p.parse_args(argv)

    from . import Composer
    from .defaults import default_drafters

    drafters = dict(d.split("=", 1) for d in args.drafter) if args.drafter else None
    try:
        composer = Composer(args.target, drafters=drafters if drafters is not None else default_drafters(args.target))
        options = dict(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            seed=args.seed, chat=args.chat,
            tree=dict(depth=args.depth, budget=args.budget, top_k=args.tree_top_k, merge_budget=args.merge_budget),
        )
        if args.use_drafter:
            options["drafter"] = args.use_drafter
        for piece in composer.stream(args.prompt, strategy=args.strategy, **options):
            print(piece, end="", flush=True)
        print()
    except ValueError as e:
        print(f"specmux generate: error: {e}", file=sys.stderr)
        return 2
    if args.stats:
        print(json.dumps(composer.last_result.stats.summary(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "generate": "generate text with a strategy",
        "eval": "compare strategies per benchmark, temperature and depth (the main job)",
        "train": "train a specialist drafter for a target",
        "route": "fit the domain router (the `domain` strategy) from the drafters' training domains",
        "models": "convert/check the built-in models (python -m compose.models)",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: specmux {" + ",".join(commands) + "} ...\n")
        for name, what in commands.items():
            print(f"  {name:<9} {what}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "generate":
        return _generate(rest)
    if cmd == "eval":
        from eval.cli import main as eval_main

        return eval_main(rest)
    if cmd == "route":
        from .route_fit import main as route_main

        return route_main(rest)
    if cmd == "train":
        from drafters.cli import main as train_main

        from .models import load_target

        return train_main(rest, load_target=load_target)
    from .models import main as models_main

    return models_main(rest)


if __name__ == "__main__":
    sys.exit(main())
