"""The layout the brief fixes: one direction of dependency between the packages, the `specmux`
dispatcher at the top, and export / import through it."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drafter_fixtures import tiny_drafter_model
from runtime.assets import load_target
from drafters.checkpoint import load_drafter_model, save_drafter
from eval.commands import COMMANDS, main as specmux
from eval_helpers import tiny_target_folder

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trees", "runtime", "drafters", "routing", "compose", "eval", "serve")
# what each package may import of ours (docs/design.md "Layout")
ALLOWED = {
    "trees": set(),
    "runtime": {"trees"},
    "drafters": {"trees", "runtime"},
    "routing": {"trees", "runtime"},
    "compose": {"trees", "runtime", "drafters", "routing"},
    "eval": {"trees", "runtime", "drafters", "routing", "compose"},
    "serve": {"trees", "runtime", "drafters", "routing", "compose"},  # the dispatcher (eval) reaches it by name only
}
# the commands that fit or evaluate against training data may load drafters.training (inside the
# function that needs it), and drafters/__init__ on `from drafters import train_drafter`; nothing
# else outside drafters/training does
TRAINING_USERS = {"drafters/__init__.py", "compose/route_fit.py", "eval/stream.py",
                  "eval/heldout.py"}  # the suite's held-out prompts, read by its own split rule


def imported_modules(file: Path) -> set[str]:
    """Every module of ours `file` imports (absolute names; relative imports resolved)."""
    package = ".".join(file.relative_to(ROOT).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def imported_packages(file: Path) -> set[str]:
    return {m.split(".")[0] for m in imported_modules(file)}


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package):
    wrong = {str(f.relative_to(ROOT)): sorted(imported_packages(f) - ALLOWED[package] - {package})
             for f in (ROOT / package).rglob("*.py")}
    assert not {f: w for f, w in wrong.items() if w}


def test_training_is_imported_only_by_training_and_its_commands():
    outside = [f for p in PACKAGES for f in (ROOT / p).rglob("*.py") if "training" not in f.relative_to(ROOT).parts]
    users = {str(f.relative_to(ROOT)) for f in outside
             if any(m.startswith("drafters.training") for m in imported_modules(f))}
    assert users <= TRAINING_USERS


@pytest.mark.parametrize("package", ["compose", "serve", "routing", "runtime"])
def test_inference_loads_no_training_module(package):
    code = f"import sys, {package}; print([m for m in sys.modules if 'training' in m])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"


def test_every_module_of_ours_imports_from_this_tree():
    """A module that moved must not be found elsewhere (an editable install of another checkout
    resolves a stale `drafters.kv` to that checkout's file)."""
    modules = [".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGES for f in (ROOT / p).rglob("*.py") if f.name != "__main__.py"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print([m for m, v in list(sys.modules.items()) if m.split('.')[0] in {PACKAGES!r} "
            f"and not (getattr(v, '__file__', None) or {str(ROOT)!r}).startswith({str(ROOT)!r})])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"


def test_dispatcher_lists_and_rejects_commands(capsys):
    assert specmux([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert specmux(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


def test_export_and_import_through_the_command_line(tmp_path, capsys):
    folder = tiny_target_folder(tmp_path / "target")
    target, _ = load_target(folder)
    for style in ("eagle1", "eagle3"):
        extra = {"target_layers": [0, 1, 2]} if style == "eagle3" else {}
        model = tiny_drafter_model(target, style=style, head="truncated" if style == "eagle3" else "target", **extra)
        ck = save_drafter(model, tmp_path / style / "ck", target=target)
        assert specmux(["export", str(ck), str(tmp_path / style / "served"), "--target", str(folder)]) == 0
        assert specmux(["import", str(tmp_path / style / "served"), str(tmp_path / style / "back"),
                        "--target", str(folder)]) == 0
        back = load_drafter_model(tmp_path / style / "back", target)
        assert back.config.style == style
        for (k, v), (k2, v2) in zip(sorted(back.state_dict().items()), sorted(model.state_dict().items())):
            assert k == k2 and torch.equal(v, v2)
    prenorm = save_drafter(tiny_drafter_model(target, eagle1_layout="prenorm"), tmp_path / "old", target=target)
    capsys.readouterr()
    assert specmux(["export", str(prenorm), str(tmp_path / "x"), "--target", str(folder)]) == 2
    assert "'prenorm' layout" in capsys.readouterr().err and not (tmp_path / "x").exists()
