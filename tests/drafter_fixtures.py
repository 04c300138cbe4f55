"""Tiny targets and drafters for the drafters/ tests (random weights, fp32, fast)."""
from __future__ import annotations

import torch

from drafters.config import DrafterConfig
from drafters.model import build_drafter_model
from trees import SamplingSpec, TreeSpec
from tiny_models import tiny_model


def tiny_target(vocab: int = 96, layers: int = 4, hidden: int = 64, seed: int = 0):
    return tiny_model("llama", vocab=vocab, layers=layers, hidden=hidden, seed=seed, attn="sdpa")


def tiny_drafter_model(target, style: str = "eagle1", head: str = "target", seed: int = 1, **overrides):
    torch.manual_seed(seed)
    if head == "truncated":
        overrides.setdefault("draft_vocab_size", target.config.vocab_size // 2)
    cfg = DrafterConfig.from_target(target.config, "tiny", style=style, head=head, **overrides)
    draft_ids = None
    if head == "truncated":
        draft_ids = torch.randperm(cfg.vocab_size)[: cfg.draft_vocab_size].sort().values
    return build_drafter_model(cfg, target, draft_ids)


def target_features(target, ids: torch.Tensor, layers) -> torch.Tensor:
    """[T, F]: the target's hidden states at `layers` for one sequence of ids [T]."""
    with torch.no_grad():
        out = target(ids[None], output_hidden_states=True)
    return torch.cat([out.hidden_states[i][0] for i in layers], dim=-1)


def assert_group_drafts_members_trees(target, drafters, group, seed: int, exact: bool = False) -> None:
    """A lockstep group and its members, fed the same committed tokens (1, 0, then 3 accepted a
    step), draft the same trees step after step: tokens and parents equal, scores bit-identical
    (exact) or within 1e-4."""
    seq = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(seed))
    feats = target_features(target, seq, drafters[0].target_layers).to(drafters[0].dtype)
    spec = TreeSpec(depth=4, top_k=3, budget=9)
    for d in [*drafters, group]:
        d.start(seq[:8], feats[:8])
    pos = 8
    for accepted in (1, 0, 3):
        root = int(seq[pos])
        together = group.draft(root, spec, SamplingSpec(), None, group.names)
        for d, tree in zip(drafters, together):
            alone = d.propose(root, spec, SamplingSpec())
            assert tree.drafter_names == (d.name,)
            assert torch.equal(tree.tokens, alone.tokens) and torch.equal(tree.parents, alone.parents)
            if exact:
                assert torch.equal(tree.scores, alone.scores)
            else:
                torch.testing.assert_close(tree.scores, alone.scores, atol=1e-4, rtol=1e-4)
        step = slice(pos, pos + accepted + 1)
        for d in [*drafters, group]:
            d.advance(seq[step], feats[step])
        pos += accepted + 1
    assert group.cache.length == drafters[0].cache.length


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer():
    """A character-level tokenizer with a ChatML template (99 ids: use a target vocab >= 99)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(i) for i in range(32, 127)]
    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def states_records(target, n: int = 6, length: int = 20, seed: int = 0, prompt_lens=None) -> list[dict]:
    """n random sequences with the target's last-layer states cached as a state cache holds them
    (features = last_hidden); prompt_len 4 each, or `prompt_lens[i]`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, target.config.vocab_size, (length,), generator=g)
        with torch.no_grad():
            hs = target(ids[None], output_hidden_states=True).hidden_states
        prompt_len = 4 if prompt_lens is None else prompt_lens[i]
        out.append({"input_ids": ids, "features": hs[-1][0], "last_hidden": hs[-1][0], "prompt_len": prompt_len})
    return out
