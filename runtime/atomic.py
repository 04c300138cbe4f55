"""Writing files and folders whole or not at all (docs/design.md "Writing files"): the one
place specmux writes through.

A file goes to a temporary name in its folder and is renamed over the target. A folder that
must change as a unit (a drafter checkpoint, a training state) is staged beside its final name
and swapped in by renames; `recover_folder` finishes or undoes a swap that a crash interrupted,
so a reader always finds either the old or the new folder complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def written(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`.
    `suffix` keeps an extension for writers that infer the format from the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with written(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, default: Callable | None = None) -> None:
    write_text(path, json.dumps(data, indent=2, default=default) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with written(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


# --- folders --------------------------------------------------------------------------------------
def staging_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.staged")  # being written


def _ready(path: Path) -> Path:
    return path.with_name(f".{path.name}.ready")  # complete, waiting to be swapped in


def _retired(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")  # the previous version, being removed


def recover_folder(path: str | Path) -> Path:
    """Finish a swap a crash interrupted (a complete new version wins), drop leftovers; cheap
    when there is nothing to do (three stat calls). Returns `path`."""
    path = Path(path)
    settle(path)
    shutil.rmtree(staging_path(path), ignore_errors=True)
    return path


def settle(path: Path) -> None:
    """Finish or undo an interrupted swap; leaves a folder being staged alone."""
    ready, retired = _ready(path), _retired(path)
    if ready.exists():
        if path.exists():
            if retired.exists():
                shutil.rmtree(retired)
            os.replace(path, retired)
        os.replace(ready, path)
    if retired.exists():
        if path.exists():
            shutil.rmtree(retired)
        else:  # the old version moved away, the new one never became ready: keep the old
            os.replace(retired, path)


def staging_folder(path: str | Path) -> Path:
    """An empty folder to write the next version of `path` into (then call `commit_folder`)."""
    path = recover_folder(path)
    staged = staging_path(path)
    staged.mkdir(parents=True)
    return staged


def commit_folder(path: str | Path, keep_others: bool = True, staged: Path | None = None) -> None:
    """Swap the staged folder (or a complete folder `staged` on the same filesystem) in.
    keep_others: files of the current version that the new one does not write (a README
    beside a checkpoint, say) are carried over (hard links)."""
    path = Path(path)
    ready, retired = _ready(path), _retired(path)
    staged = staged or staging_path(path)
    settle(path)
    if keep_others and path.is_dir():
        for entry in path.iterdir():
            if not (staged / entry.name).exists():
                carry(entry, staged / entry.name)
    os.replace(staged, ready)  # from here on the new version is complete
    if path.exists():
        os.replace(path, retired)
    os.replace(ready, path)
    shutil.rmtree(retired, ignore_errors=True)


def carry(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def replaced_folder(path: str | Path, keep_others: bool = True) -> Iterator[Path]:
    """Yield an empty folder; when the block succeeds it takes `path`'s place as a unit."""
    staged = staging_folder(path)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    commit_folder(path, keep_others)
