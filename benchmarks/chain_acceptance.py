"""The prompts of serve_vllm_cpu.py through specmux: plain greedy tokens (to compare with vLLM's)
and each drafter's chain acceptance at depth 3, as vLLM's num_speculative_tokens=3 drafts
(docs/serving.md):

    python benchmarks/chain_acceptance.py 6 eagle1=eagle:CHECKPOINT eagle3=eagle:CHECKPOINT
"""
import json
import sys
from pathlib import Path

from compose import Composer

sys.path.insert(0, str(Path(__file__).parent))
from serve_vllm_cpu import QUESTIONS  # noqa: E402



def main() -> None:
    n = int(sys.argv[1])
    drafters = dict(a.split("=", 1) for a in sys.argv[2:])
    # float32, as serve_vllm_cpu.py runs the target: both see the same target argmax
    composer = Composer("smollm2-135m-instruct", drafters=drafters, dtype="float32")
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS[:n]]
    out = {"plain": [composer.generate(c, strategy="autoregressive", max_new_tokens=64).token_ids for c in chats]}
    for name in drafters:
        accepted = steps = 0
        for chat, plain in zip(chats, out["plain"]):
            r = composer.generate(chat, strategy="single", drafter=name, max_new_tokens=64,
                                  tree=dict(depth=3, top_k=1, budget=3))
            assert r.token_ids == plain, f"{name}: greedy output differs from plain decoding"
            accepted += sum(s.accepted for s in r.stats.steps)
            steps += len(r.stats.steps)
        out[name] = {"steps": steps, "accepted": accepted, "tau": (accepted + steps) / steps}
    print("SPECMUX " + json.dumps(out))


if __name__ == "__main__":
    main()
