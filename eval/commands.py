"""The `specmux` command: `specmux <subcommand> ...`, each subcommand parsed by the package it
drives. The dispatcher sits in eval, the top of the dependency order (eval -> compose ->
drafters, trees), because it reaches every package; nothing below imports it."""
from __future__ import annotations

import importlib
import sys

# name -> (module, function, what it does); modules load only when their subcommand runs
COMMANDS = {
    "generate": ("compose.cli", "main", "generate text with a composition strategy"),
    "eval": ("eval.cli", "main", "compare strategies per benchmark, temperature and depth (the main job)"),
    "train": ("drafters.training.cli", "main", "train a specialist drafter for a target"),
    "train-suite": ("drafters.training.suite", "main", "corpus, measured recipe and the math/chat/mixed drafters, in one run"),
    "route": ("compose.route_fit", "main", "fit the domain router (the `domain` strategy) from the drafters' training domains"),
    "export": ("drafters.cli", "export_main", "write a drafter as a folder vLLM / SGLang serve"),
    "import": ("drafters.cli", "import_main", "read a speculators / vLLM EAGLE drafter into a checkpoint"),
    "models": ("runtime.assets", "main", "convert or check the built-in models"),
    "serve": ("serve.cli", "main", "an OpenAI-compatible server batching concurrent requests' trees"),
}


def usage() -> str:
    lines = [f"usage: specmux {{{','.join(COMMANDS)}}} ...", ""]
    lines += [f"  {name:<11} {what}" for name, (_, _, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"specmux: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
