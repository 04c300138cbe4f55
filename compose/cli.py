"""`specmux generate`: text from a prompt with a composition strategy (the `specmux` dispatcher
is eval/commands.py)."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
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
    fixed = " (default: tree=\"auto\", sized to this machine and the running acceptance; any of --depth, --budget, " \
            "--tree-top-k fixes the tree, the others then take the TreeOptions defaults)"
    p.add_argument("--depth", type=int, default=None, help="draft levels below the root" + fixed)
    p.add_argument("--budget", type=int, default=None, help="draft nodes per drafter tree" + fixed)
    p.add_argument("--tree-top-k", type=int, default=None, help="children per expanded node" + fixed)
    p.add_argument("--merge-budget", choices=["sum", "equal"], default="sum")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--stats", action="store_true", help="print generation statistics as JSON")
    args = p.parse_args(argv)

    from pydantic import ValidationError

    from .options import GenerateOptions, validation_message

    shape = {k: v for k, v in dict(depth=args.depth, budget=args.budget, top_k=args.tree_top_k).items() if v is not None}
    options = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, chat=args.chat, tree=dict(shape, merge_budget=args.merge_budget, auto=not shape),
    )
    try:
        GenerateOptions(**options)  # before the model loads: a bad flag is told in a moment
    except ValidationError as e:
        print(f"specmux generate: error: {validation_message(e)[0]}", file=sys.stderr)
        return 2
    from .composer import Composer  # transformers: after the flags are checked
    from .defaults import default_drafters

    drafters = dict(d.split("=", 1) for d in args.drafter) if args.drafter else None
    try:
        composer = Composer(args.target, drafters=drafters if drafters is not None else default_drafters(args.target))
        if args.use_drafter:
            options["drafter"] = args.use_drafter
        for piece in composer.stream(args.prompt, strategy=args.strategy, **options):
            print(piece, end="", flush=True)
        print()
    except ValidationError as e:  # (a ValueError too)
        print(f"specmux generate: error: {validation_message(e)[0]}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"specmux generate: error: {e}", file=sys.stderr)
        return 2
    if args.stats:
        print(json.dumps(composer.last_result.stats.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
