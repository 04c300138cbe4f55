"""Issue 10's benchmark: every ratio in its goals from one run, then one table of the goals.

    python benchmarks/bench_drafting.py [--sections costs ar auto qwen threads] [--new-tokens 64]
        [--items 1] [--threads 1] [--auto-benchmarks gsm8k mtbench math] [--auto-strategies single merged_tree]
        [--rounds 1] [--diagnose] [--busy]

Sections: costs (a draft level vs a one-token target forward; three drafters in lockstep vs
one), ar (our plain decoding vs transformers' generate), auto (tree="auto" vs a grid of fixed
trees and today's default tree, single specialist and merged_tree, on GSM8K and MT-Bench items by
default; --diagnose adds what auto chose, expected and measured), qwen (Qwen2.5-Coder 1.5B with the
0.5B drafter: ours vs transformers' assisted generation), threads (quiet vs beside a busy
process). --busy keeps one core spinning in another process for the whole run (a cost profile
measured in the run is measured busy too: set SPECMUX_COSTS to an empty folder to force one).
Every greedy output is checked against plain decoding. Times: one torch thread unless
stated; the load average is printed next to every section.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # measure the checkout this script is in, not the installed copy
from bench_costs import transformers_forward_ms, twin  # noqa: E402
from bench_threads import one_core_busy  # noqa: E402
from bench_threads import measure as measure_threads  # noqa: E402
from prompts import PROMPTS, load_average, print_goals  # noqa: E402

from compose import Composer, default_drafters  # noqa: E402
from compose.costs import measure_forward, measure_levels, median_ms  # noqa: E402
from compose.lockstep import DraftUnit  # noqa: E402
from drafters import DrafterConfig, FeatureDrafter, FeatureDrafterGroup, build_drafter_model  # noqa: E402
from eval.datasets import load_benchmark, sample_items  # noqa: E402
from trees import SamplingSpec, TreeSpec  # noqa: E402

TODAY = dict(depth=5, top_k=8, budget=32)  # the default tree before tree="auto"
GRID = [dict(depth=d, top_k=1, budget=d) for d in (1, 2, 3, 4, 6, 8)] + [
    dict(depth=2, top_k=2, budget=4), dict(depth=3, top_k=4, budget=8), dict(depth=4, top_k=4, budget=12),
    dict(depth=5, top_k=4, budget=16), TODAY, dict(depth=6, top_k=8, budget=48)]
GOALS: list[tuple[str, str, str, bool]] = []  # goal, measured, target, met
MISMATCHES: list[str] = []


def goal(name: str, measured: str, target: str, met: bool) -> None:
    GOALS.append((name, measured, target, met))


def header(title: str) -> None:
    print(f"\n### {title} (load average {load_average()})\n", flush=True)


def chat_ids(composer: Composer, text: str) -> torch.Tensor:
    return composer.encode([{"role": "user", "content": text}])


def timed_generate(composer: Composer, ids, n: int, **kw) -> tuple[list[int], float, float]:
    r = composer.generate(ids, max_new_tokens=n, **kw)
    return r.token_ids, r.stats.total_time, r.stats.tau


def hf_generate(model, ids: torch.Tensor, n: int, **kw) -> tuple[list[int], float]:
    t = time.perf_counter()
    out = model.generate(ids[None], max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)
    return out[0, ids.numel():].tolist(), time.perf_counter() - t


# --- costs ----------------------------------------------------------------------------------------
EVICT = torch.zeros(64 << 20, dtype=torch.uint8)  # twice the dev machine's 32 MiB L3


def cold_median_ms(fn, reps: int) -> float:
    """Median ms of fn with the CPU caches emptied before each call, as a decode step finds them
    after the target's forward has streamed its weights (the eviction itself is not timed)."""
    return median_ms(fn, reps, warmup=1, before=lambda: EVICT.add_(1))


def kernel_ms(fn, reps: int) -> float:
    """ms per call spent inside the linear and attention kernels (torch.profiler self time): what
    the members' weights and caches cost, whatever the bookkeeping around them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    kernels = ("_linear_pointwise", "scaled_dot_product", "aten::addmm", "aten::mm")
    spent = sum(e.self_cpu_time_total for e in prof.key_averages() if any(k in e.key for k in kernels))
    return spent / 1e3 / reps


def section_costs(composer: Composer, reps: int) -> None:
    target = composer.target
    name, drafter = next(iter(composer.drafters.items()))
    ours = measure_forward(target, (1, 16), reps=reps)
    theirs = transformers_forward_ms(target.model, (1, 16), 256, reps)
    one = DraftUnit([name], drafter)
    root, level = measure_levels(target, one, frontiers=(4,), reps=reps)
    trio = [drafter, twin(drafter, 1), twin(drafter, 2)]
    group = DraftUnit([d.name for d in trio], FeatureDrafterGroup(trio))
    _, level3 = measure_levels(target, group, frontiers=(4,), reps=reps)
    spec = TreeSpec(depth=5, top_k=4, budget=16)
    tree1 = median_ms(lambda: one.draft(7, spec, SamplingSpec(), None), reps)
    tree3 = median_ms(lambda: group.draft(7, spec, SamplingSpec(), None), reps)
    cold1 = cold_median_ms(lambda: one.draft(7, spec, SamplingSpec(), None), reps)
    cold3 = cold_median_ms(lambda: group.draft(7, spec, SamplingSpec(), None), reps)
    kernels3 = kernel_ms(lambda: group.draft(7, spec, SamplingSpec(), None), reps)
    dtype = next(drafter.model.parameters()).dtype
    # three drafters sharing the target's frozen head (the EAGLE default head; random layer
    # weights: the cost does not depend on their values), in the default drafter's dtype
    cfg = DrafterConfig.from_target(target.model.config, "smollm2-135m-instruct", style="eagle1", head="target")
    full = FeatureDrafter(build_drafter_model(cfg, target.model).eval().cast(dtype), name="fullhead")
    full_trio = [full, twin(full, 1), twin(full, 2)]
    full_group = DraftUnit([d.name for d in full_trio], FeatureDrafterGroup(full_trio))
    full_unit = DraftUnit(["fullhead"], full)
    measure_levels(target, full_unit, frontiers=(4,), reps=1)  # starts them on a 256-token context
    measure_levels(target, full_group, frontiers=(4,), reps=1)
    full1 = median_ms(lambda: full_unit.draft(7, spec, SamplingSpec(), None), reps)
    full3 = median_ms(lambda: full_group.draft(7, spec, SamplingSpec(), None), reps)
    header(f"costs on the default target, 256-token context, default drafter {name!r} ({dtype})")
    print("| quantity | ms | ratio |")
    print("|---|---:|---:|")
    print(f"| target forward, 1 token: ours / transformers | {ours[1]:.1f} / {theirs[1]:.1f} | {ours[1] / theirs[1]:.2f} |")
    print(f"| target forward, 16 tokens: ours / transformers | {ours[16]:.1f} / {theirs[16]:.1f} | {ours[16] / theirs[16]:.2f} |")
    print(f"| draft root level (frontier 1 + queued) / 1-token forward | {root:.2f} | {root / ours[1]:.1%} |")
    print(f"| one draft level, frontier 4 / 1-token forward | {level[4]:.2f} | {level[4] / ours[1]:.1%} |")
    print(f"| one level, 3 drafters in lockstep / 1 drafter | {level3[4]:.2f} | {level3[4] / level[4]:.2f}x |")
    print(f"| tree (depth 5, top-k 4), 3 in lockstep / 1 drafter | {tree3:.1f} / {tree1:.1f} | {tree3 / tree1:.2f}x |")
    print(f"| same, caches emptied before each tree (as after a target forward) | {cold3:.1f} / {cold1:.1f} | {cold3 / cold1:.2f}x |")
    print(f"| same, 3 in lockstep: linear + attention kernels alone / 1 drafter's whole tree | {kernels3:.1f} / {tree1:.1f} | {kernels3 / tree1:.2f}x |")
    print(f"| same, 3 drafters sharing the target's frozen head / 1 | {full3:.1f} / {full1:.1f} | {full3 / full1:.2f}x |")
    goal("one draft level (frontier 4) / one-token target forward", f"{level[4] / ours[1]:.1%}", "<= 8%", level[4] / ours[1] <= 0.08)
    goal("3 same-architecture drafters / 1 drafter (tree drafting time), default drafter (own truncated heads)",
         f"{tree3 / tree1:.2f}x (cold {cold3 / cold1:.2f}x; kernels alone {kernels3 / tree1:.2f}x)", "<= 1.5x", tree3 / tree1 <= 1.5)
    goal("3 same-architecture drafters / 1 drafter (tree drafting time), sharing the target's frozen head",
         f"{full3 / full1:.2f}x", "<= 1.5x", full3 / full1 <= 1.5)


# --- our autoregressive vs transformers generate ---------------------------------------------------
def section_ar(composer: Composer, prompts: dict, n: int) -> None:
    model = composer.target.model
    ours = theirs = 0.0
    for text in prompts.values():
        ids = chat_ids(composer, text)
        toks, dt, _ = timed_generate(composer, ids, n, strategy="autoregressive")
        ref, dt_hf = hf_generate(model, ids, n)
        ours, theirs = ours + dt, theirs + dt_hf
        if toks != ref:
            MISMATCHES.append("ours autoregressive vs transformers generate")
    header(f"plain decoding, {len(prompts)} prompts x {n} tokens")
    print("| method | seconds | tokens/s | ratio to transformers |")
    print("|---|---:|---:|---:|")
    total = n * len(prompts)
    print(f"| ours autoregressive | {ours:.1f} | {total / ours:.2f} | {theirs / ours:.2f}x |")
    print(f"| transformers generate | {theirs:.1f} | {total / theirs:.2f} | 1.00x |")
    goal("our autoregressive / transformers generate", f"{theirs / ours:.2f}x", ">= 1.0x", theirs / ours >= 1.0)


# --- tree="auto" vs fixed trees ------------------------------------------------------------------
DOMAIN = {"gsm8k": "math", "math": "math", "mtbench": "chat", "humaneval": "code"}  # the specialist and warm-up prompt


def auto_strategies(composer: Composer, names: list[str], domain: str) -> dict[str, dict]:
    """label -> generate() keywords: `single` (the benchmark's specialist drafter) or `merged_tree`."""
    specialist = domain if domain in composer.drafters else next(iter(composer.drafters))
    kinds = {"single": (f"single {specialist}", dict(strategy="single", drafter=specialist)),
             "merged_tree": ("merged_tree", dict(strategy="merged_tree"))}
    return dict(kinds[name] for name in names)


def autotree_of(composer: Composer, kw: dict):
    """The Composer's AutoTree for the strategy of `kw` (compose/tree_policy.py's cache key)."""
    autos = [(k, v) for k, v in composer.strategy_cache.items() if isinstance(k, tuple) and k[0] == "autotree"]
    return next(v for k, v in autos if k[1] == kw["strategy"] and dict(k[2]).get("drafter") == kw.get("drafter"))


def record_choices(auto) -> list:
    """Every tree `auto` chooses from now on, in order (one per decode step)."""
    chosen, choose = [], auto.choose
    auto.choose = lambda: chosen.append(choose()) or chosen[-1]
    return chosen


def print_draft_costs(auto, chosen: list, steps: list) -> None:
    """Drafting and forward time by tree depth: measured against the profile (unscaled) and
    against what auto predicts now (its learnt scales), to see which cost it gets wrong."""
    rows: dict = {}
    for spec, step in zip(chosen, steps):
        if spec is not None:
            rows.setdefault((spec.depth, spec.top_k), []).append(step)
    print("\n| depth, top-k | steps | draft ms: profile / auto's / measured | forward ms: profile / auto's / measured |")
    print("|---|---:|---:|---:|")
    for (depth, top_k), ss in sorted(rows.items()):
        nodes = sum(s.tree_size for s in ss) / len(ss)
        profile_fwd = auto.costs.forward(round(nodes))
        print(f"| {depth}, {top_k} | {len(ss)} | {auto.draft_ms(depth, top_k):.1f} / "
              f"{auto.draft_scale * auto.draft_ms(depth, top_k):.1f} / {1e3 * sum(s.t_draft for s in ss) / len(ss):.1f} | "
              f"{profile_fwd:.1f} / {auto.forward_scale * profile_fwd:.1f} / {1e3 * sum(s.t_forward for s in ss) / len(ss):.1f} |")


def print_auto_diagnosis(auto, chosen: list, steps: list) -> None:
    """What tree="auto" chose, what it expects of each choice now and what the steps measured;
    what it believes of the first and deeper levels (rank 1) against what chains accepted."""
    rows: dict = {}
    for spec, step in zip(chosen, steps):
        rows.setdefault(spec, []).append(step)
    print("\n| auto's tree (depth, top-k, budget) | steps | tokens/step expected / measured | step ms predicted / measured |")
    print("|---|---:|---:|---:|")
    for spec, ss in sorted(rows.items(), key=lambda r: -len(r[1])):
        shape = "root only" if spec is None else f"{spec.depth}, {spec.top_k}, {spec.budget}"
        expected = 1.0 if spec is None else auto.expected_tokens(spec)
        predicted = auto.step_ms(spec.depth, spec.top_k, spec.budget) if spec is not None else float("nan")
        measured = 1e3 * sum(s.t_draft + s.t_forward + s.t_verify for s in ss) / len(ss)
        print(f"| {shape} | {len(ss)} | {expected:.2f} / {1 + sum(s.accepted for s in ss) / len(ss):.2f} | "
              f"{predicted:.1f} / {measured:.1f} |")
    print_draft_costs(auto, chosen, steps)
    models = getattr(auto.acceptance, "models", {"all drafters": auto.acceptance})
    believed = "; ".join(f"{name} {m.p[0, 0]:.2f}, {m.p[1, 0]:.2f}" for name, m in models.items())
    drafted = [(spec, s.accepted) for spec, s in zip(chosen, steps) if spec is not None]
    observed = []
    for d in range(1, 7):
        reached = [a for spec, a in drafted if spec.depth >= d and a >= d - 1]
        observed.append(f"{sum(a >= d for a in reached) / len(reached):.2f} ({len(reached)})" if reached else "-")
    print(f"\nbelieved p[rank 1] at the first, deeper levels: {believed}; node share {auto.node_share:.2f}, "
          f"reality {auto.reality:.2f}\nobserved P(depth d accepted | d - 1 was), d = 1..6 (steps): {', '.join(observed)}")


def section_auto(composer: Composer, items: int, n: int, benches: list[str], names: list[str], diagnose: bool,
                 rounds: int = 1) -> None:
    """rounds >= 2: the items are decoded `rounds` times over (every tree in turn within each
    item) and the best fixed tree is chosen on the first round and compared with auto on the
    others: the best of 12 noisy measurements, compared on the same ones, flatters the fixed
    trees by their noise (a max is biased upward)."""
    for bench in benches:
        domain = DOMAIN[bench]
        strategies = auto_strategies(composer, names, domain)
        prompts = [item.turns[0] for item in sample_items(load_benchmark(bench), items, seed=0)]
        ids = [chat_ids(composer, p) for p in prompts]
        header(f"tree=\"auto\" vs fixed trees on {bench}: {items} item(s) x {n} tokens x {rounds} round(s), "
               "ratio to plain decoding")
        warm = chat_ids(composer, PROMPTS[domain])  # not a measured prompt
        for label, kw in strategies.items():
            # tree="auto" learns across generations (a Composer keeps its AutoTree): measure it
            # warm, as a serving Composer runs after its first request
            composer.generate(warm, max_new_tokens=n, tree="auto", **kw)
            chosen = record_choices(autotree_of(composer, kw)) if diagnose else []
            configs = [("auto", "auto")] + [(f"d{t['depth']} k{t['top_k']} b{t['budget']}", t) for t in GRID]
            # item by item, plain decoding and every tree in turn: a change of load hits all alike
            ar_time = [0.0] * rounds
            times = {tag: [0.0] * rounds for tag, _ in configs}
            taus, auto_steps = {tag: [] for tag, _ in configs}, []
            for rnd in range(rounds):
                for x in ids:
                    ref, t_plain, _ = timed_generate(composer, x, n, strategy="autoregressive")
                    ar_time[rnd] += t_plain
                    for tag, tree in configs:
                        r = composer.generate(x, max_new_tokens=n, tree=tree, **kw)
                        if r.token_ids != ref:
                            MISMATCHES.append(f"{label} tree {tag} on {bench}")
                        times[tag][rnd] += r.stats.total_time
                        taus[tag].append(r.stats.tau)
                        auto_steps += list(r.stats.steps) if tag == "auto" else []
            rates = {tag: sum(ar_time) / sum(t) for tag, t in times.items()}
            first = {tag: ar_time[0] / t[0] for tag, t in times.items()}
            later = {tag: sum(ar_time[1:]) / sum(t[1:]) for tag, t in times.items()} if rounds > 1 else {}
            print("\n| strategy | tree | tokens/s ratio to AR | mean tau |" + (" round 1 | rounds 2.. |" if later else "") +
                  "\n|---|---|---:|---:|" + ("---:|---:|" if later else ""))
            for tag, tree in configs:
                print(f"| {label} | {tag}{' (today default)' if tree == TODAY else ''} | {rates[tag]:.2f}x | "
                      f"{sum(taus[tag]) / len(taus[tag]):.2f} |" + (f" {first[tag]:.2f}x | {later[tag]:.2f}x |" if later else ""),
                      flush=True)
            if diagnose:
                print_auto_diagnosis(autotree_of(composer, kw), chosen, auto_steps)
            fixed = [tag for tag, _ in configs if tag != "auto"]
            best = max(rates[tag] for tag in fixed)
            if later:
                pick = max(fixed, key=first.get)
                goal(f"auto / the best of {len(GRID)} fixed trees on round 1 ({pick}), rounds 2-{rounds}, {label}, {bench}",
                     f"{later['auto'] / later[pick]:.2f}", ">= 0.90", later["auto"] / later[pick] >= 0.90)
            goal(f"auto / best of {len(GRID)} fixed trees, same runs, {label}, {bench}", f"{rates['auto'] / best:.2f}",
                 ">= 0.90", rates["auto"] / best >= 0.90)
            today = rates[f"d{TODAY['depth']} k{TODAY['top_k']} b{TODAY['budget']}"]
            goal(f"auto / today's default tree, {label}, {bench}", f"{rates['auto'] / today:.2f}", ">= 1.0",
                 rates["auto"] >= today)


# --- the Qwen pair ---------------------------------------------------------------------------------
def section_qwen(prompts: dict, n: int, diagnose: bool = False) -> None:
    from runtime.assets import load_target

    composer = Composer("qwen2.5-coder-1.5b-instruct", drafters={"lm0.5b": "lm:qwen2.5-coder-0.5b-instruct"})
    assistant, _ = load_target("qwen2.5-coder-0.5b-instruct")  # as transformers users load it
    model = composer.target.model
    # first touches of freshly loaded weights are not timed; tree="auto" and transformers' assistant
    # (its confidence threshold) both adapt across calls: both warm up on a prompt not measured
    warm = chat_ids(composer, PROMPTS["summary"])
    auto_kw = dict(strategy="single", drafter="lm0.5b")
    composer.generate(warm, max_new_tokens=n // 2, tree="auto", **auto_kw)
    hf_generate(model, warm, n // 2, assistant_model=assistant)
    totals = {"ours autoregressive": 0.0, "transformers generate": 0.0, "transformers assisted": 0.0,
              "ours single, tree auto": 0.0, "ours single, chain depth 4": 0.0}
    chosen = record_choices(autotree_of(composer, auto_kw)) if diagnose else []
    auto_steps, chain_steps = [], []
    for text in prompts.values():
        ids = chat_ids(composer, text)
        ref, dt, _ = timed_generate(composer, ids, n, strategy="autoregressive")
        totals["ours autoregressive"] += dt
        for label, kw in (("transformers generate", {}), ("transformers assisted", {"assistant_model": assistant})):
            toks, dt = hf_generate(model, ids, n, **kw)
            totals[label] += dt
            MISMATCHES.extend([f"qwen {label}"] if toks != ref else [])
        for label, tree in (("ours single, tree auto", "auto"), ("ours single, chain depth 4", dict(depth=4, top_k=1, budget=4))):
            r = composer.generate(ids, max_new_tokens=n, tree=tree, **auto_kw)
            totals[label] += r.stats.total_time
            (auto_steps if tree == "auto" else chain_steps).extend(r.stats.steps)
            MISMATCHES.extend([f"qwen {label}"] if r.token_ids != ref else [])
    header(f"Qwen2.5-Coder-1.5B target, 0.5B drafter: {len(prompts)} prompts x {n} tokens")
    print("| method | seconds | ratio to transformers assisted |")
    print("|---|---:|---:|")
    for label, secs in totals.items():
        print(f"| {label} | {secs:.1f} | {totals['transformers assisted'] / secs:.2f}x |")
    if diagnose:
        auto = autotree_of(composer, auto_kw)
        print_auto_diagnosis(auto, chosen, auto_steps)
        print("\nthe depth-4 chain's steps, for comparison:")
        print_draft_costs(auto, [TreeSpec(depth=4, top_k=1, budget=4)] * len(chain_steps), chain_steps)
    ours = totals["ours single, tree auto"]  # the default tree, not the best of several
    goal("Qwen pair: our single (tree auto) / transformers assisted", f"{totals['transformers assisted'] / ours:.2f}x",
         ">= 1.2x", totals["transformers assisted"] / ours >= 1.2)


# --- threads ---------------------------------------------------------------------------------------
def section_threads(n: int) -> None:
    header("plain decoding beside one busy process (fresh process per setting)")
    print("| threads | quiet tok/s (threads) | busy tok/s (threads) | busy time / quiet time |")
    print("|---|---:|---:|---:|")
    for setting in ("1", "2", "auto"):
        quiet, qt = measure_threads(setting, n, busy=False)
        busy, bt = measure_threads(setting, n, busy=True)
        print(f"| {setting}{' (default)' if setting == 'auto' else ''} | {quiet:.2f} ({qt}) | {busy:.2f} ({bt}) | {quiet / busy:.2f}x |", flush=True)
        if setting == "auto":
            goal("default threads: busy time / quiet time", f"{quiet / busy:.2f}x", "<= 2x", quiet / busy <= 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sections", nargs="+", default=["costs", "ar", "auto", "qwen", "threads"])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--items", type=int, default=1, help="items of each benchmark for the auto section")
    p.add_argument("--auto-benchmarks", nargs="+", default=["gsm8k", "mtbench"], choices=sorted(DOMAIN))
    p.add_argument("--auto-strategies", nargs="+", default=["single", "merged_tree"], choices=["single", "merged_tree"])
    p.add_argument("--rounds", type=int, default=1, help="auto section: decode the items this many times over; "
                   ">= 2: the best fixed tree is picked on round 1 and compared with auto on the others")
    p.add_argument("--diagnose", action="store_true", help="auto and qwen sections: what auto chose, expected and measured")
    p.add_argument("--prompts", type=int, default=2, help="benchmark prompts for the ar and qwen sections")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", default="1")
    p.add_argument("--busy", action="store_true", help="one core kept busy by another process for the whole run")
    args = p.parse_args()
    with one_core_busy(args.busy):
        run(args)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(int(args.threads))
    prompts = dict(list(PROMPTS.items())[: args.prompts])
    print(f"torch threads {args.threads}{'; one core busy (spin loop)' if args.busy else ''}; "
          f"load average at start {load_average()}", flush=True)
    composer = Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"), threads=int(args.threads))
    print(f"default drafters: {sorted(composer.drafters)}", flush=True)
    if "costs" in args.sections:
        section_costs(composer, args.reps)
    if "ar" in args.sections:
        section_ar(composer, prompts, args.new_tokens)
    if "auto" in args.sections:
        section_auto(composer, args.items, args.new_tokens, args.auto_benchmarks, args.auto_strategies, args.diagnose,
                     args.rounds)
    if "qwen" in args.sections:
        section_qwen(prompts, args.new_tokens, args.diagnose)
    if "threads" in args.sections:
        section_threads(args.new_tokens)
    goal("every greedy output equals plain decoding", f"{len(MISMATCHES)} mismatches", "0", not MISMATCHES)
    header("goals")
    print_goals(GOALS, MISMATCHES)


if __name__ == "__main__":
    main()
