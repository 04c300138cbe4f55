"""Which thread count threads="auto" picks at each check of a 128-token generation (default target),
and the speed. `python thread_checks.py CHECKOUT` (the checkout whose compose/ to measure)."""
import sys, collections
sys.path.insert(0, sys.argv[1])
import torch
import compose.threads as th
from compose import Composer
log = collections.Counter()
orig = th.ThreadPolicy.apply
def apply(self):
    due = self.step == 0 or (self.threads == "auto" and self.step % th.RECHECK_STEPS == 0)
    orig(self)
    if due: log[torch.get_num_threads()] += 1
th.ThreadPolicy.apply = apply
c = Composer("smollm2-135m-instruct")
ids = c.encode([{"role": "user", "content": "Explain how a bicycle works in detail."}])
import time
for strategy in ("autoregressive", None):
    log.clear(); t = time.perf_counter()
    r = c.generate(ids, strategy=strategy, max_new_tokens=128)
    print(sys.argv[1], strategy or "default", "thread choices at checks:", dict(log), f"{r.stats.new_tokens / (time.perf_counter() - t):.1f} tok/s")
