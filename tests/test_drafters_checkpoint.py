"""Checkpoints load with validation and save as a unit (serving formats: test_drafters_export.py)."""
import json

import pytest
import torch

from drafter_fixtures import target_features, tiny_drafter_model, tiny_target
from drafters.checkpoint import load_drafter, load_drafter_model, save_drafter
from drafters.feature import FeatureDrafter
from trees import DraftTree
from trees.build import dense_logits


@pytest.fixture(scope="module")
def target():
    return tiny_target()


def _draft_logits(model, target, seed=0):
    torch.manual_seed(seed)
    seq = torch.randint(0, 96, (10,))
    d = FeatureDrafter(model)
    d.start(seq[:9], target_features(target, seq[:9], model.config.target_layers))
    tree = DraftTree.from_lists([int(seq[9]), 4, 8, 15], [-1, 0, 0, 2])
    d.begin_tree(int(seq[9]))
    out = torch.cat([dense_logits(d.step(tree, torch.tensor(f))) for f in ([0], [1, 2], [3])])
    d.end_tree()
    return out


@pytest.mark.parametrize("head", ["target", "truncated", "lowrank"])
def test_save_load_round_trip(tmp_path, target, head):
    model = tiny_drafter_model(target, head=head)
    save_drafter(model, tmp_path / "ck", target=target)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_drafter_model(tmp_path / "ck", target)
    assert torch.equal(_draft_logits(loaded, target), _draft_logits(model, target))
    assert load_drafter(tmp_path / "ck", target, name="math").name == "math"


@pytest.mark.parametrize("layout", ["eagle", "prenorm"])
def test_eagle1_layouts_round_trip_and_version_1_checkpoints_load_as_prenorm(tmp_path, target, layout):
    model = tiny_drafter_model(target, eagle1_layout=layout)
    names = set(model.state_dict())
    # "eagle" is EAGLE-1 as vLLM serves it: no fc bias, no norm on the layer input or before the head
    assert ({"fc.bias", "layers.0.input_layernorm.weight", "norm.weight"} <= names) == (layout == "prenorm")
    assert not ({"fc.bias", "layers.0.input_layernorm.weight", "norm.weight"} & names) or layout == "prenorm"
    ck = save_drafter(model, tmp_path / "ck", target=target)
    if layout == "prenorm":  # a checkpoint written before the layout field existed
        meta = json.loads((ck / "config.json").read_text())
        meta["version"] = 1
        del meta["drafter"]["eagle1_layout"]
        (ck / "config.json").write_text(json.dumps(meta))
    loaded = load_drafter_model(ck, target)
    assert loaded.config.eagle1_layout == layout
    assert torch.equal(_draft_logits(loaded, target), _draft_logits(model, target))


def test_shipped_drafters_load_with_their_layout():
    from drafters.checkpoint import read_config
    from drafters.pretrained import PRETRAINED_DIR

    for folder in PRETRAINED_DIR.glob("*/*/"):
        if (folder / "config.json").is_file():
            cfg, meta = read_config(folder)
            assert meta["version"] >= 2 or cfg.eagle1_layout == "prenorm"


def test_load_rejects_another_target(tmp_path, target):
    save_drafter(tiny_drafter_model(target), tmp_path / "ck", target=target)
    with pytest.raises(ValueError, match="hidden size mismatch"):
        load_drafter_model(tmp_path / "ck", tiny_target(hidden=32))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        load_drafter_model(tmp_path / "ck", tiny_target(vocab=80))
    with pytest.raises(ValueError, match="different target"):
        load_drafter_model(tmp_path / "ck", tiny_target(seed=7))
    with pytest.raises(ValueError, match="trained for target 'tiny'"):
        load_drafter_model(tmp_path / "ck", target, target_name="smollm2-135m-instruct")


def test_load_rejects_missing_and_corrupt_tensors(tmp_path, target):
    from safetensors.torch import load_file, save_file

    ck = save_drafter(tiny_drafter_model(target), tmp_path / "ck", target=target)
    weights = ck / "model.safetensors"
    state = load_file(str(weights))
    del state["fc.weight"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"missing tensors \['fc.weight'\]"):
        load_drafter_model(ck, target)
    weights.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_drafter_model(ck, target)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_drafter_model(ck, target)


def test_bf16_checkpoint_loads(tmp_path, target):
    model = tiny_drafter_model(target)
    save_drafter(model, tmp_path / "ck", target=target, dtype=torch.bfloat16)
    loaded = load_drafter_model(tmp_path / "ck", target)
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight.bfloat16().float())
