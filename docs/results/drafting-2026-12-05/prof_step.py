# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/drafting-2026-12-05/prof_step.py [threads] [strategy] [--module-drafters] [--profile [cumulative|tottime]]
# Per-step split of the default strategy (draft / target forward / the rest), bf16, T=0.
import os, sys, time, statistics as st
import torch
from compose import Composer, default_drafters

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
if "--module-drafters" in sys.argv:  # the drafters' module forward (drafters/compiled.py off)
    import drafters.feature
    drafters.feature.compiled_members = lambda models: None
strategy = sys.argv[2] if len(sys.argv) > 2 else "merged_tree"
torch.set_num_threads(threads)
c = Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"), dtype="bfloat16", threads=threads)
prompts = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Write a short, friendly email to a colleague asking to move our meeting from Tuesday to Thursday.",
]
c.generate([{"role": "user", "content": prompts[0]}], strategy=strategy, max_new_tokens=16)
for p in prompts:
    t = time.perf_counter()
    r = c.generate([{"role": "user", "content": p}], strategy=strategy, max_new_tokens=64)
    wall = time.perf_counter() - t
    s = r.stats.steps
    print(f"{len(r.token_ids)} tok {wall*1e3/len(r.token_ids):.1f} ms/tok, steps {len(s)}, tau {st.mean(x.accepted for x in s)+1:.2f}, "
          f"draft {st.mean(x.t_draft for x in s)*1e3:.2f} fwd {st.mean(x.t_forward for x in s)*1e3:.2f} "
          f"rest {st.mean(x.t_verify for x in s)*1e3:.2f} ms/step, nodes {st.mean(x.tree_size for x in s):.1f}, load {os.getloadavg()[0]:.2f}")
if "--profile" in sys.argv:
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
    c.generate([{"role": "user", "content": prompts[0]}], strategy=strategy, max_new_tokens=64)
    pr.disable()
    pstats.Stats(pr).sort_stats(sys.argv[-1] if sys.argv[-1] in ("cumulative","tottime") else "tottime").print_stats(45)
