"""The prompts of serve_vllm_cpu.py through specmux: plain greedy tokens (to compare with vLLM's)
and each drafter's chain acceptance at depth 3, as vLLM's num_speculative_tokens=3 drafts
(docs/serving.md):

    python benchmarks/chain_acceptance.py 6 eagle1=eagle:CHECKPOINT eagle3=eagle:CHECKPOINT
"""
import json, sys
from compose import Composer
QUESTIONS = [  # the same as serve_vllm_cpu.py
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is 17 * 23 - 45? Show your steps.",
    "A train travels 60 km in 45 minutes. What is its average speed in km per hour?",
    "Simplify the fraction 84/126 and explain how.",
    "If x + 7 = 19, what is 3x?",
    "Tom has 3 boxes of 12 pencils and gives away 15. How many are left?",
]
n = int(sys.argv[1]); drafters = dict(a.split("=", 1) for a in sys.argv[2:])
composer = Composer("smollm2-135m-instruct", drafters=drafters)
out = {"plain": []}
for q in QUESTIONS[:n]:
    out["plain"].append(composer.generate([{"role": "user", "content": q}], strategy="autoregressive", max_new_tokens=64).token_ids)
for name in drafters:
    acc, steps = 0, 0
    for q, plain in zip(QUESTIONS[:n], out["plain"]):
        r = composer.generate([{"role": "user", "content": q}], strategy="single", drafter=name, max_new_tokens=64,
                              tree=dict(depth=3, top_k=1, budget=3))
        assert r.token_ids == plain
        acc += sum(s.accepted for s in r.stats.steps); steps += len(r.stats.steps)
    out[name] = {"steps": steps, "accepted": acc, "tau": (acc + steps) / steps}
print("SPECMUX " + json.dumps(out))
