import torch
from runtime.prepacked import matmul
torch.manual_seed(0)
for (o,i) in [(192,64),(576,576),(1536,576),(576,1536),(49152,576),(192,576)]:
    w=(torch.randn(o,i)*0.05).to(torch.bfloat16)
    x=torch.randn(64,i).to(torch.bfloat16)
    with torch.inference_mode():
        ref=[matmul(x[r:r+1],w) for r in range(64)]
        bad=[]
        for n in list(range(1,65)):
            out=matmul(x[:n],w)
            d=[r for r in range(n) if not torch.equal(out[r:r+1],ref[r])]
            if d: bad.append((n,len(d)))
    print((o,i), 'bad row counts:', bad[:12], len(bad))
