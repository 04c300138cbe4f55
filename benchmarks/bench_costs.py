"""Cost benchmark (issue 10): one target forward for 1..64 query tokens over a 256-token cache
(ours vs transformers' own forward with its DynamicCache), and one draft level of the feature
drafters (full frozen head / truncated head, float32 / bfloat16), alone and three in lockstep,
as ratios to a one-token target forward, all in one run.

    python benchmarks/bench_costs.py [--threads 1] [--reps 7] [--draft-vocab 4096]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from prompts import load_average  # noqa: E402

from compose import Composer  # noqa: E402
from compose.costs import FORWARD_SIZES, measure_forward, measure_levels, median_ms  # noqa: E402
from compose.lockstep import DraftUnit  # noqa: E402
from drafters import DrafterConfig, FeatureDrafter, FeatureDrafterGroup, build_drafter_model, load_pretrained  # noqa: E402
from drafters.heads import TargetHead  # noqa: E402


def transformers_forward_ms(model, sizes, context: int, reps: int) -> dict[int, float]:
    """transformers' forward with its DynamicCache and a 4D tree mask (what the engine used to run)."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=g)
        for n in sizes:
            cache = DynamicCache(config=model.config)
            model(prompt, past_key_values=cache, use_cache=True)
            ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
            mask = torch.zeros(1, 1, n, context + n)
            mask[..., context:] = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)

            def one():
                model(ids, position_ids=torch.arange(context, context + n)[None], past_key_values=cache,
                      attention_mask=None if n == 1 else mask, use_cache=True)
                cache.crop(-n)  # transformers 5.2x: a negative crop removes that many tokens

            out[n] = median_ms(one, reps)
    return out


def twin(d: FeatureDrafter, i: int) -> FeatureDrafter:
    """A same-architecture copy with perturbed layer weights, sharing the frozen embedding and
    head (drafting cost does not depend on the weights' values)."""
    frozen = [d.model.embed_weight] + ([d.model.head.weight] if isinstance(d.model.head, TargetHead) else [])
    m = copy.deepcopy(d.model, memo={id(t): t for t in frozen})
    with torch.no_grad():
        for p in m.layers.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return FeatureDrafter(m, name=f"{d.name}{i}")


def variants(target_model, math: FeatureDrafter, draft_vocab: int) -> dict[str, list[FeatureDrafter]]:
    """Three same-architecture drafters per variant: the shipped math drafter (or a truncated-head
    drafter, random weights) and two twins."""
    torch.manual_seed(0)
    cfg = DrafterConfig.from_target(target_model.config, "smollm2-135m-instruct", style="eagle1", head="truncated",
                                    draft_vocab_size=draft_vocab)
    ids = torch.randperm(cfg.vocab_size)[:draft_vocab].sort().values
    truncated = FeatureDrafter(build_drafter_model(cfg, target_model, ids).eval(), name="trunc")
    bases = {"full head fp32 (shipped math)": math, f"truncated {draft_vocab} fp32": truncated,
             "full head bf16": FeatureDrafter(copy.deepcopy(math.model).to(torch.bfloat16), name="math-bf16"),
             f"truncated {draft_vocab} bf16": FeatureDrafter(copy.deepcopy(truncated.model).to(torch.bfloat16), name="trunc-bf16")}
    return {label: [d, twin(d, 1), twin(d, 2)] for label, d in bases.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--draft-vocab", type=int, default=4096)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    composer = Composer("smollm2-135m-instruct")
    target = composer.target
    math = load_pretrained("smollm2-135m-instruct", "math", target.model)
    print(f"load average before: {load_average()}; torch threads {torch.get_num_threads()}; context 256", flush=True)

    ours = measure_forward(target, FORWARD_SIZES, reps=args.reps)
    theirs = transformers_forward_ms(target.model, FORWARD_SIZES, 256, args.reps)
    print("\n### one target forward (SmolLM2-135M, fp32), ms\n")
    print("| query tokens | ours | transformers | ours / transformers | ours / ours(1) |")
    print("|---:|---:|---:|---:|---:|")
    for n in FORWARD_SIZES:
        print(f"| {n} | {ours[n]:.1f} | {theirs[n]:.1f} | {ours[n] / theirs[n]:.2f} | {ours[n] / ours[1]:.2f} |")

    one_token = ours[1]
    print(f"\n### one draft level, frontier 4 (root level: frontier 1 + queued tokens), ms and share of a one-token target forward ({one_token:.1f} ms)\n")
    print("| drafter | root level | level, 1 drafter | share | level, 3 in lockstep | 3 / 1 | 3 one after another / 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, trio in variants(target.model, math, args.draft_vocab).items():
        root1, one = measure_levels(target, DraftUnit([trio[0].name], trio[0]), frontiers=(4,), reps=args.reps)
        _, three = measure_levels(target, DraftUnit([d.name for d in trio], FeatureDrafterGroup(trio)), frontiers=(4,), reps=args.reps)
        seq = sum(measure_levels(target, DraftUnit([d.name], d), frontiers=(4,), reps=args.reps)[1][4] for d in trio)
        print(f"| {label} | {root1:.2f} | {one[4]:.2f} | {one[4] / one_token:.1%} | {three[4]:.2f} | "
              f"{three[4] / one[4]:.2f}x | {seq / one[4]:.2f}x |", flush=True)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
