import sys, time, os
t0 = time.perf_counter()
import torch
from runtime import weight_formats
if sys.argv[1] == "reference":
    weight_formats.search_library = lambda: None
from compose import Composer
c = Composer("smollm2-135m-instruct", drafters={}, dtype="auto")
t1 = time.perf_counter()
r = c.generate([{"role": "user", "content": "What is 2 + 2?"}], strategy="autoregressive", max_new_tokens=1)
t2 = time.perf_counter()
print(f"{sys.argv[1]:9s} import+Composer {t1-t0:.2f} s, first generate {t2-t1:.2f} s, total {t2-t0:.2f} s  load {os.getloadavg()[0]:.2f}")
