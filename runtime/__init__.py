"""The ground floor: running a causal LM (the fast decoder, the general path, the KV cache,
oneDNN-prepacked linears, the batch-invariant bf16 attention, the target's dtype) and handling
its assets (built-in models, their converted cache, files written whole). It imports nothing of
ours but `trees`; drafters/, compose/, routing/ and serve/ build on it (docs/design.md "Layout")."""
from .assets import DEFAULT_TARGET, ModelAssetError, load_target, load_tokenizer, resolve_model_dir, specmux_home
from .decoder import Decoder
from .hf_decoder import make_decoder
from .kv import KVCache

__all__ = ["DEFAULT_TARGET", "ModelAssetError", "load_target", "load_tokenizer", "resolve_model_dir", "specmux_home",
           "Decoder", "make_decoder", "KVCache"]
