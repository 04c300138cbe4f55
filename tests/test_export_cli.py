"""`specmux export` flags where users meet them: --dtype, --verifier, --speculative-tokens, and
what each defaults to (the checkpoint's dtype, the target's folder, 3 draft tokens)."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from drafter_fixtures import tiny_drafter_model
from runtime.assets import load_target
from drafters.checkpoint import save_drafter
from eval.commands import main as specmux
from eval_helpers import tiny_target_folder


def test_export_flags_and_their_defaults(tmp_path, capsys):
    folder = tiny_target_folder(tmp_path / "target")
    target, _ = load_target(folder)
    model = tiny_drafter_model(target, style="eagle3", head="truncated", target_layers=[0, 1, 2])
    ck = save_drafter(model, tmp_path / "ck", target=target)

    assert specmux(["export", str(ck), str(tmp_path / "plain"), "--target", str(folder)]) == 0
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())["speculators_config"]
    assert cfg["verifier"]["name_or_path"] == str(folder)
    assert cfg["proposal_methods"][0]["speculative_tokens"] == 3
    assert load_file(str(tmp_path / "plain" / "model.safetensors"))["fc.weight"].dtype == torch.float32

    argv = ["export", str(ck), str(tmp_path / "flags"), "--target", str(folder), "--dtype", "bfloat16",
            "--verifier", "org/served-target", "--speculative-tokens", "5"]
    assert specmux(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "flags")
    cfg = json.loads((tmp_path / "flags" / "config.json").read_text())["speculators_config"]
    assert cfg["verifier"]["name_or_path"] == "org/served-target"
    assert cfg["proposal_methods"][0]["speculative_tokens"] == 5
    weights = load_file(str(tmp_path / "flags" / "model.safetensors"))
    assert weights["fc.weight"].dtype == torch.bfloat16
    assert torch.equal(weights["fc.weight"], model.state_dict()["fc.weight"].to(torch.bfloat16))
