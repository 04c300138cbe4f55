import sys, time, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import torch
from compose import Composer
from trees import attention_mask
torch.set_num_threads(2)
dec = Composer("smollm2-135m-instruct", drafters={}, dtype="float32", threads=2).target.decoder
g = torch.Generator().manual_seed(0); ctx = 150
vocab = int(dec.model.config.vocab_size)
with torch.inference_mode():
    cache = dec.new_cache(ctx + 8)
    dec.forward(torch.randint(0, vocab, (ctx,), generator=g), torch.arange(ctx), cache, None, hidden_layers=[2, 15, 27])
    res = []
    for rows in (1, 2):
        mask = attention_mask(torch.ones(rows, rows, dtype=torch.bool).tril(), ctx, dec.dtype) if rows > 1 else None
        ids = torch.randint(0, vocab, (rows,), generator=g); pos = ctx + torch.arange(rows)
        ts = []
        for _ in range(300):
            t = time.perf_counter()
            dec.forward(ids, pos, cache, mask, hidden_layers=[2, 15, 27]); cache.crop(ctx)
            ts.append(time.perf_counter() - t)
        ts.sort()
        res.append(f"rows {rows}: min {1e3*ts[0]:.3f} p10 {1e3*ts[30]:.3f} p50 {1e3*ts[150]:.3f}")
print(" | ".join(res), f"load {os.getloadavg()[0]:.2f}")
