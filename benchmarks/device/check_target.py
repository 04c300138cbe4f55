"""benchmarks/device/regen_corpus.sh's check (docs/results/corpus-2026-12-04). Load the target as the suite does (target_path + gguf_file) and check it against expect.json:
weight digest and prompt token ids computed on the dev machine from specmux's converted cache."""
import hashlib, json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, ".")
from drafters.training.corpus import chat_prompt_ids

def digest(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode()); h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

def prompt_sample(work):
    p = json.loads((Path(work) / "prompts.json").read_text())
    return [x[1] for x in p["math"][:20] + p["chat"][:20] + p["write"][:10]]

if __name__ == "__main__":
    mode, work = sys.argv[1], sys.argv[2]
    t0 = time.time()
    if mode == "expect":
        sys.path.insert(0, ".")
        from runtime import assets
        model, tok = assets.load_target("smollm2-135m-instruct")
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = sys.argv[3]
        tok = AutoTokenizer.from_pretrained(path, gguf_file="model.gguf")
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file="model.gguf", dtype=torch.float32)
    got = {"weights": digest(model), "ids": [chat_prompt_ids(tok, p) for p in prompt_sample(work)]}
    print(f"loaded+digested in {time.time()-t0:.1f}s")
    if mode == "expect":
        Path(work, "expect.json").write_text(json.dumps(got))
    else:
        want = json.loads(Path(work, "expect.json").read_text())
        ok_w, ok_ids = got["weights"] == want["weights"], got["ids"] == want["ids"]
        print("weights equal:", ok_w, "prompt ids equal:", ok_ids)
        sys.exit(0 if ok_w and ok_ids else 3)
