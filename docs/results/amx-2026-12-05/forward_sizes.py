import torch, sys
from compose import Composer
from compose.costs import measure_forward
torch.set_num_threads(int(sys.argv[1]))
for dt in ("bfloat16", "float32"):
    c = Composer("smollm2-135m-instruct", drafters={}, dtype=dt, threads=None)
    r = measure_forward(c.target, sizes=(1, 4, 8, 16, 24, 32, 33, 48, 64), reps=5)
    print(dt, sys.argv[1], 'threads', {k: round(v, 1) for k, v in r.items()}, 'ratio32', round(r[32]/r[1], 2), flush=True)
