# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05b/probes/spaced_cache_ab.py [threads]
"""Plain bf16 decoding of the default target, one forward per token after a 300-token prompt, with
the KV cache keeping the invariant attention's operands (spaced=True, what the decoder makes) or
rebuilding them per call (spaced=False): interleaved, $ROUNDS rounds (20) of $TOKENS tokens (32) each, median ms/token."""
import os, statistics, sys, time
import torch
from compose import Composer
from runtime.kv import KVCache

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
c = Composer("smollm2-135m-instruct", drafters={}, dtype="bfloat16", threads=None)
d = c.target.decoder
prompt = torch.randint(0, 49152, (300,), generator=torch.Generator().manual_seed(0))
times = {True: [], False: []}
ROUNDS, TOKENS = int(os.environ.get("ROUNDS", 20)), int(os.environ.get("TOKENS", 32))
with torch.inference_mode():
    for rnd in range(ROUNDS + 1):
        for spaced in ((True, False) if rnd % 2 else (False, True)):  # alternate which goes first
            cache = KVCache(d.num_layers, d.n_kv, d.head_dim, d.dtype, capacity=400, spaced=spaced)
            out = d.forward(prompt, torch.arange(300), cache, None, logits_rows=slice(-1, None))
            token = out.logits[-1].argmax().view(1)
            t = time.perf_counter()
            for _ in range(TOKENS):
                token = d.forward(token, torch.tensor([cache.length]), cache, None).logits[-1].argmax().view(1)
            if rnd:
                times[spaced].append((time.perf_counter() - t) / TOKENS * 1e3)
a, b = statistics.median(times[True]), statistics.median(times[False])
print(f"{torch.get_num_threads()} thread(s), {ROUNDS} rounds: spaced cache {a:.1f} ms/token, per-call operands {b:.1f} ms/token, "
      f"ratio {b / a:.3f}; load {os.getloadavg()[0]:.2f}")
