"""Usage: proxy_data.py DOMAIN PROMPTS TOKENS (run as `python proxy_data.py math 96 64`). Cache greedy target continuations + layer-K hidden states + target logits for a prompt stream (proxy sim)."""
import sys, time, torch
from drafters.assets import load_target
from eval.stream import stream_prompts
torch.set_num_threads(1)
domain, n, ntok = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, tok = load_target("smollm2-135m-instruct")
prompts, _ = stream_prompts(domain, n)
tok.padding_side = "left"
if tok.pad_token is None: tok.pad_token = tok.eos_token
texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) for p in prompts]
out = []
t0 = time.time()
B = 16
for s in range(0, n, B):
    enc = tok(texts[s:s+B], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        g = model.generate(**enc, max_new_tokens=ntok, do_sample=False)
    for i in range(g.shape[0]):
        mask = enc["attention_mask"][i].bool()
        prompt_ids = enc["input_ids"][i][mask]
        resp = g[i, enc["input_ids"].shape[1]:]
        eos = (resp == tok.eos_token_id).nonzero()
        if len(eos): resp = resp[: int(eos[0]) + 1]
        ids = torch.cat([prompt_ids, resp])
        with torch.inference_mode():
            o = model(ids[None], output_hidden_states=True)
        start = len(prompt_ids) - 1  # position whose logits predict the first response token
        rec = {"ids": ids, "start": start,
               "h": {K: o.hidden_states[K][0, start:-1].clone() for K in (4, 6, 8, 12, 15)},
               "logits": o.logits[0, start:-1].to(torch.bfloat16).clone()}
        out.append(rec)
    print(s, time.time() - t0, flush=True)
torch.save(out, f"proxy_{domain}_{n}_{ntok}.pt")  # about 0.5 GB: not kept in the repo
