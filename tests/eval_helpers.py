"""A tiny random target saved as a transformers folder with a character-level tokenizer and a
chat template, so `specmux eval --target <folder>` runs end to end in seconds."""
from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tiny_models import tiny_model

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
VOCAB = 128


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = ["<unk>", "\n", "\t"] + [c for c in string.printable if c not in "\n\t\r\x0b\x0c"]
    vocab = {c: i for i, c in enumerate(chars)}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_target_folder(path: Path, layers: int = 3, seed: int = 0) -> Path:
    model = tiny_model("llama", vocab=VOCAB, layers=layers, seed=seed)
    model.config.max_position_embeddings = 4096  # character-level prompts are long; rotary has no table
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return Path(path)


# fixtures for CLI tests on the tiny target (import both names into the test module)
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight the other test workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return tiny_target_folder(tmp_path_factory.mktemp("tiny") / "model")
