"""Which thread count threads="auto" picks at each check of a 128-token generation (default target),
and the speed. `python thread_checks.py CHECKOUT` (the checkout whose compose/ to measure)."""
import collections
import sys
import time

sys.path.insert(0, sys.argv[1])
import compose.threads as th  # noqa: E402
from compose import Composer  # noqa: E402

log = collections.Counter()
free_cores = th.free_cores


def logged_free_cores():  # what ThreadPolicy.apply asks at each of its checks, and sets
    chosen = free_cores()
    log[chosen] += 1
    return chosen


th.free_cores = logged_free_cores
c = Composer("smollm2-135m-instruct")
ids = c.encode([{"role": "user", "content": "Explain how a bicycle works in detail."}])
for strategy in ("autoregressive", None):
    log.clear()
    t = time.perf_counter()
    r = c.generate(ids, strategy=strategy, max_new_tokens=128)
    print(sys.argv[1], strategy or "default", "thread choices at checks:", dict(log),
          f"{r.stats.new_tokens / (time.perf_counter() - t):.1f} tok/s")
