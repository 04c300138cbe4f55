"""Small randomly initialised transformers models for fast, exact tests."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM


def tiny_model(arch: str = "llama", vocab: int = 96, layers: int = 2, hidden: int = 64, seed: int = 0,
               attn: str = "sdpa", init_std: float = 0.2):
    """A peaked random model (large init std) so argmaxes are well separated and drafts from
    its own early layers get accepted often enough to exercise deep paths."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=init_std, tie_word_embeddings=False, attn_implementation=attn,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    return model.eval().requires_grad_(False)


def needs_native_bf16():
    """Skip marker for bf16-target tests on a CPU without native bf16 (no AMX / AVX512-BF16),
    where dtype="auto" never picks bf16. Only the hardware decides: where bf16 is native, a
    failing kernel self-check fails these tests instead of skipping them."""
    import pytest

    from runtime.target_dtype import native_bf16

    return pytest.mark.skipif(not native_bf16(), reason="this CPU does not multiply bfloat16 natively: "
                              "dtype='auto' runs the target in float32 here")
