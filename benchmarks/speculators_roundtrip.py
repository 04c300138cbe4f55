"""Export -> speculators 0.9.0 -> save -> import, on a tiny random llama target: prints, per head
and file dtype, how far speculators' own Eagle3DraftModel is from specmux's drafter (draft logits
over 40 positions) and how far the re-imported drafter is. Needs `make interop`.

    python benchmarks/speculators_roundtrip.py             # tiny target, every head and file dtype
    python benchmarks/speculators_roundtrip.py --shipped   # the shipped drafters on their real target
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from drafter_fixtures import tiny_target  # noqa: E402
from test_drafters_export import draft_logits, eagle3, sequence, speculators_logits  # noqa: E402

from drafters.speculators import export_speculators, import_speculators  # noqa: E402

SHIPPED_TARGET = "smollm2-135m-instruct"


def main() -> None:
    from speculators.models.eagle3 import Eagle3DraftModel

    target = tiny_target()
    print("| head | file dtype | max abs(speculators - specmux) | top-1 agreement | max abs(re-imported - specmux) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        target.save_pretrained(tmp / "target")  # speculators reads the verifier's config
        for head in ("target", "truncated", "lowrank"):
            for dtype in (torch.float32, torch.bfloat16):
                model = eagle3(target, head, rope_theta=500000.0)
                for p in model.parameters():  # what the file holds, so the comparison is of code
                    p.data = p.data.to(dtype).float()
                folder = tmp / f"{head}-{dtype}"
                export_speculators(model, folder, verifier=str(tmp / "target"), dtype=dtype)
                ours = draft_logits(model, target, length=40)
                _, theirs = speculators_logits(folder, target, [1, 2, 3], sequence(40))
                Eagle3DraftModel.from_pretrained(folder).save_pretrained(tmp / "saved")
                back = draft_logits(import_speculators(tmp / "saved", target), target, length=40)
                agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
                print(f"| {head} | {str(dtype).removeprefix('torch.')} | {(theirs - ours).abs().max().item():.1e} | "
                      f"{agree:.3f} | {(back - ours).abs().max().item():.1e} |")


def shipped(length: int = 64) -> None:
    """Each shipped drafter of the default target through the same round trip (float32 file),
    on its real target: the drafters users would serve."""
    from speculators.models.eagle3 import Eagle3DraftModel

    from drafters.checkpoint import load_drafter_model
    from drafters.pretrained import pretrained_drafters
    from runtime.assets import load_target, resolve_model_dir

    target, _ = load_target(SHIPPED_TARGET)
    target.eval()
    print(f"| shipped drafter ({SHIPPED_TARGET}) | max abs(speculators - specmux) | top-1 agreement | "
          "max abs(re-imported - specmux) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, spec in sorted(pretrained_drafters(SHIPPED_TARGET).items()):
            model = load_drafter_model(spec.split(":", 1)[-1], target).float()
            try:
                folder = export_speculators(model, tmp / name, verifier=str(resolve_model_dir(SHIPPED_TARGET)),
                                            dtype=torch.float32)
            except ValueError as e:  # a layout the servers cannot load: say so, go on
                print(f"| {name} | not exportable: {e} | – | – |", flush=True)
                continue
            ours = draft_logits(model, target, length=length)
            _, theirs = speculators_logits(folder, target, list(model.config.target_layers), sequence(length))
            Eagle3DraftModel.from_pretrained(folder).save_pretrained(tmp / f"{name}-saved")
            back = draft_logits(import_speculators(tmp / f"{name}-saved", target), target, length=length)
            agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
            print(f"| {name} | {(theirs - ours).abs().max().item():.1e} | {agree:.3f} | "
                  f"{(back - ours).abs().max().item():.1e} |", flush=True)


if __name__ == "__main__":
    shipped() if "--shipped" in sys.argv[1:] else main()
