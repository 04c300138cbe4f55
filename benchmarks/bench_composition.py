"""Composition benchmark (issue 5): time per decode step of each strategy, split into drafting,
pack/verify/compaction (non-model overhead) and the target forward, for N = 2, 3, 4 drafters on
the default target, against `single`, in one run (prompts interleaved).

    python benchmarks/bench_composition.py [--new-tokens 48] [--drafters SPEC,SPEC,...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from prompts import add_common_args, apply_common_args  # noqa: E402

from compose import Composer  # noqa: E402

DEFAULT_SPECS = ["early-exit:6", "early-exit:8", "early-exit:10", "early-exit:12"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--drafters", default=",".join(DEFAULT_SPECS), help="comma-separated drafter specs (4)")
    add_common_args(p, depth=4, budget=12)
    args = p.parse_args()
    tree, prompts = apply_common_args(args)
    specs = args.drafters.split(",")
    try:  # trained specialists when present
        from compose.defaults import default_drafters

        trained = default_drafters("smollm2-135m-instruct")
        if not all(s.startswith("early-exit") for s in trained.values()) and args.drafters == ",".join(DEFAULT_SPECS):
            specs = list(trained.values()) + specs[len(trained):]
    except Exception as e:  # noqa: BLE001 - report and use the early-exit set
        print(f"(trained drafters unavailable: {e})", file=sys.stderr)
    composer = Composer("smollm2-135m-instruct", drafters={f"d{i}": s for i, s in enumerate(specs)})
    tok = composer.tokenizer
    all_names = list(composer.drafters)

    rows: dict[tuple, list] = {}
    for pname, text in prompts.items():
        ids = composer.encode([{"role": "user", "content": text}])
        runs = [("autoregressive", 1, {})]
        runs += [("single", 1, dict(drafter="d0"))]
        for n in (2, 3, 4):
            sub = {k: composer.drafters[k] for k in all_names[:n]}
            for strategy, extra in [("confidence", {}), ("entropy", {}), ("merged_tree", {"merge_budget": "sum"}),
                                    ("merged_tree", {"merge_budget": "equal"})]:
                runs.append((strategy + (f"/{extra['merge_budget']}" if extra else ""), n, dict(_sub=sub, tree={**tree, **extra})))
        for label, n, kw in runs:
            sub = kw.pop("_sub", None)
            c = composer
            if sub is not None:
                c = Composer(composer.target.model, drafters=sub, tokenizer=tok)
            r = c.generate(ids, strategy=label.split("/")[0], max_new_tokens=args.new_tokens, **{"tree": tree, **kw})
            s = r.stats
            acc = rows.setdefault((label, n), [0, 0.0, 0.0, 0.0, 0, 0.0, 0])
            acc[0] += s.n_steps
            t = s.phase_times()
            acc[1] += t["draft"]
            acc[2] += t["verify"]
            acc[3] += t["forward"]
            acc[4] += s.new_tokens
            acc[5] += s.total_time
            acc[6] += sum(st.accepted + 1 for st in s.steps)
            kw["_sub"] = sub
        print(f"  prompt {pname} done", file=sys.stderr, flush=True)

    base = rows[("autoregressive", 1)]
    base_tps = base[4] / base[5]
    single_draft = rows[("single", 1)][1] / rows[("single", 1)][0]
    print(f"\n### per-step times on the default target (ms), {len(prompts)} prompts × {args.new_tokens} tokens, tree {tree}\n")
    print("| strategy | N | steps | draft | pack+verify | target fwd | draft / single's | overhead share | τ | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (label, n), (steps, d, v, f, toks, tot, emitted) in rows.items():
        step = (d + v + f) / steps
        print(f"| {label} | {n} | {steps} | {1e3 * d / steps:.1f} | {1e3 * v / steps:.1f} | {1e3 * f / steps:.1f} | "
              f"{(d / steps) / single_draft if single_draft else float('nan'):.2f}x | {v / steps / step:.1%} | "
              f"{emitted / steps:.2f} | {toks / tot / base_tps:.2f}x |")


if __name__ == "__main__":
    main()
