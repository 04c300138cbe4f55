"""The ground floor: running a causal LM (the fast decoder, the general path, the KV cache,
oneDNN-prepacked linears, the batch-invariant bf16 attention, the target's dtype) and handling
its assets (built-in models, their converted cache, files written whole). It imports nothing of
ours but `trees`; drafters/, compose/, routing/ and serve/ build on it (docs/design.md "Layout")."""
from .lazy import lazy_exports

# public name -> its module, imported on first use (PEP 562): a CLI that needs a name from here
# (DEFAULT_TARGET) does not wait for transformers
_LAZY = {
    "DEFAULT_TARGET": ".assets", "ModelAssetError": ".assets", "load_target": ".assets", "load_tokenizer": ".assets",
    "resolve_model_dir": ".assets", "specmux_home": ".assets", "Decoder": ".decoder", "make_decoder": ".hf_decoder",
    "KVCache": ".kv",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["DEFAULT_TARGET", "ModelAssetError", "load_target", "load_tokenizer", "resolve_model_dir", "specmux_home",
           "Decoder", "make_decoder", "KVCache"]
