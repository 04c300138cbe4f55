"""`specmux export` / `specmux import`: serving formats (drafters/speculators.py, docs/serving.md).
Apart from `specmux train` (drafters/training/cli.py) so that exporting never loads the trainer."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from runtime import assets

from .checkpoint import load_drafter_model, read_config, save_drafter
from .speculators import export_speculators, import_speculators

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def export_main(argv: list[str] | None = None) -> int:
    """`specmux export CHECKPOINT OUT`: a specmux drafter as a folder vLLM / SGLang serve."""
    p = folder_command("specmux export", "Write a trained drafter in the format vLLM and SGLang serve: the "
                       "speculators eagle3 folder for eagle3 drafters, vLLM's EAGLE folder for eagle1 ones "
                       "(see docs/serving.md).", "checkpoint", "a specmux drafter checkpoint folder")
    p.add_argument("--target", help="built-in name or folder of the target (default: the one it was trained for)")
    p.add_argument("--verifier", help="target name or path recorded for the server (default: the target's folder)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: the checkpoint's)")
    p.add_argument("--speculative-tokens", type=int, default=3, help="draft tokens per step recorded in the config")
    args = p.parse_args(argv)

    def export() -> Path:
        cfg, _ = read_config(args.checkpoint)
        target_ref = args.target or cfg.target_name
        target, _ = assets.load_target(target_ref)
        model = load_drafter_model(args.checkpoint, target)
        verifier = args.verifier or str(assets.resolve_model_dir(target_ref))
        return export_speculators(model, args.out, verifier=verifier, speculative_tokens=args.speculative_tokens,
                                  dtype=DTYPES[args.dtype] if args.dtype else None,
                                  verifier_architectures=list(target.config.architectures or []) or None)

    return report_folder(p.prog, export)


def import_main(argv: list[str] | None = None) -> int:
    """`specmux import FOLDER OUT --target T`: a speculators eagle3 / vLLM EAGLE drafter as a specmux checkpoint."""
    p = folder_command("specmux import", "Read a speculators eagle3 folder or a vLLM EAGLE (llama) drafter folder "
                       "and write a specmux drafter checkpoint, validated against the target.",
                       "folder", "the drafter folder to import")
    p.add_argument("--target", default=assets.DEFAULT_TARGET, help="built-in name or folder of the target")
    args = p.parse_args(argv)

    def convert() -> Path:
        target, _ = assets.load_target(args.target)
        return save_drafter(import_speculators(args.folder, target, target_name=args.target), args.out, target=target)

    return report_folder(p.prog, convert)


def folder_command(prog: str, description: str, source: str, source_help: str) -> argparse.ArgumentParser:
    """A parser for `prog SOURCE OUT ...` (OUT: a folder replaced as a unit)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(source, help=source_help)
    p.add_argument("out", help="output folder (replaced as a unit)")
    return p


def report_folder(prog: str, write: Callable[[], Path]) -> int:
    """Run `write`, print the folder it wrote (exit 0) or the problem (exit 2)."""
    try:
        print(write())
    except (ValueError, assets.ModelAssetError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
