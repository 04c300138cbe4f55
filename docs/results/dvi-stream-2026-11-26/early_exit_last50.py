"""early-exit:6 (no learning) on all of the chat stream's last 50 prompts (150-199): the stream ran it
on 175-199 only. Same prompts, tree, tokens as docs/results/dvi-stream-2026-11-26/chat."""
import json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import torch
from compose import Composer
from drafters.lm import EarlyExitDrafter
from eval.stream import stream_prompts
R = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat")
cfg = json.load(open(f"{R}/config.json"))
prompts, _ = stream_prompts("chat", 200)
torch.set_num_threads(1)
c = Composer("smollm2-135m-instruct", threads=1)
c.add_drafter("early-exit", EarlyExitDrafter(c.target.model, cfg["exit_layer"]))
recs = [json.loads(l) for l in open(f"{R}/stream.jsonl")]
old = {r["index"]: r for r in recs if r["run"] == "early-exit"}
dvi = [r for r in recs if r["run"] == "dvi-kl_rl" and r["index"] >= 150]
print(open("/proc/loadavg").read().strip())
emitted = steps = 0; same = 0
for i in range(150, 200):
    r = c.generate(prompts[i], strategy="single", drafter="early-exit", max_new_tokens=cfg["max_new_tokens"], chat=True, tree=cfg["tree"])
    e, s = sum(x.accepted + 1 for x in r.stats.steps), len(r.stats.steps)
    emitted += e; steps += s
    if i in old:
        same += (e, s) == (old[i]["emitted"], old[i]["steps"])
ee = emitted / steps
learner = sum(r["emitted"] for r in dvi) / sum(r["steps"] for r in dvi)
print(f"early-exit:6 tau over prompts 150-199: {ee:.3f} (steps {steps}); recorded prompts 175-199 reproduced exactly: {same}/{len(old)}")
print(f"dvi-kl_rl tau over prompts 150-199 (recorded): {learner:.3f} ({len(dvi)} prompts) -> {learner / ee:.3f}x early-exit")
print(open("/proc/loadavg").read().strip())
