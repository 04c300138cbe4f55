import torch,time
torch.manual_seed(0)
def apply(x,p): return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
# many distinct weights so they stream from memory as in decoding
for dt in (torch.bfloat16, torch.float32):
  for hint in (1,8):
    ws=[(torch.randn(3072,576)*0.05).to(dt) for _ in range(40)]
    with torch.inference_mode():
      ps=[torch.ops.mkldnn._reorder_linear_weight(w, hint) for w in ws]
      x=torch.randn(4,576).to(dt)
      for th in (1,2):
        torch.set_num_threads(th)
        for p in ps: apply(x,p)
        t=time.perf_counter()
        for _ in range(5):
          for p in ps: apply(x,p)
        print(dt, 'hint',hint,'threads',th, round((time.perf_counter()-t)/200*1e3,3),'ms per 3072x576, 4 rows', flush=True)
