"""Where a drafted step's time goes on this machine: single:math on 4 GSM8K questions, fixed chains."""
import sys, os
sys.path.insert(0, os.environ.get("ROOT", str(__import__("pathlib").Path(__file__).resolve().parents[3])))
import torch
from compose import Composer, default_drafters
from eval.datasets import load_gsm8k
torch.set_num_threads(2)
items = load_gsm8k()[:4]
c = Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"))
cases = [("autoregressive", None)] + [("single:math", {"depth": d, "top_k": 1, "budget": d}) for d in (1, 2, 3)] + [("single:math", "auto")]
if len(sys.argv) > 1: cases = cases[:1] + [("single:math", {"depth": 2, "top_k": 2, "budget": 4}), ("single:math", {"depth": 3, "top_k": 2, "budget": 6})]
for strat, tree in cases:
    for warm in (1, 0):
        toks = secs = 0; steps = []
        for it in items:
            kw = {} if tree is None else {"tree": tree, "drafter": "math"}
            r = c.generate(it.turns[0], strategy=strat.split(":")[0], max_new_tokens=64, temperature=0.0, chat=True, **kw)
            st = r.stats
            toks += st.new_tokens; secs += st.total_time - st.prefill_time; steps += st.steps
        if warm: continue
        n = len(steps)
        if not n:
            print(f'{strat:15s} tok/s {toks/secs:6.1f} per token ms {1e3*secs/toks:.2f} tokens {toks} secs {secs:.2f} load {os.getloadavg()[0]:.2f}'); continue
        f = lambda a: 1e3 * sum(getattr(s, a) for s in steps) / n
        tau = sum(s.accepted + 1 for s in steps) / n
        size = sum(s.tree_size for s in steps) / n
        print(f"{strat:15s} {str(tree):45s} tok/s {toks/secs:6.1f} tau {tau:.2f} nodes {size:.1f} | per step ms: total {1e3*secs/n:.2f} draft {f('t_draft'):.2f} verify {f('t_verify'):.2f} forward {f('t_forward'):.2f}  load {os.getloadavg()[0]:.2f}")
