"""The suite's training corpus as one compressed archive in the repository (docs/design.md
"The shipped corpus"), so training reproduces without regeneration, asset packages or a GPU.

An archive is a tar.xz of a suite work folder's data (prompts, the target's written problems,
the regenerated answers of both rounds, the data report) with a manifest beside it: sha256 of the
archive and of every member, record and token counts per corpus, the overlap report and how the
answers were generated. `unpack_corpus` checks both digests before it writes anything, then
places the members atomically, so the suite's `regenerate` stage finds every part done.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from runtime.atomic import write_bytes, write_json

# the work-folder data an archive holds (paths relative to the suite's work_dir)
MEMBERS = ("prompts.json", "prompts-extra.json", "eval_prompts.json", "written.json", "data_report.json",
           "written", "corpus")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_files(work: Path) -> list[Path]:
    files = []
    for name in MEMBERS:
        path = work / name
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            files.append(path)
    return files


def corpus_counts(work: Path) -> dict[str, dict]:
    """Records, prompt tokens and answer tokens per corpus folder (work/corpus/<name>)."""
    counts = {}
    for folder in sorted((work / "corpus").iterdir()):
        records = [json.loads(line) for part in sorted(folder.glob("part-*.jsonl"))
                   for line in part.read_text().splitlines() if line.strip()]
        counts[folder.name] = {"records": len(records),
                               "prompt_tokens": sum(r["prompt_len"] for r in records),
                               "answer_tokens": sum(len(r["input_ids"]) - r["prompt_len"] for r in records)}
    return counts


def pack_corpus(work: str | Path, archive: str | Path, generator: dict, sources: dict) -> dict:
    """Write `archive` (tar.xz) and `archive`.manifest.json from the suite work folder `work`."""
    import lzma

    work, archive = Path(work), Path(archive)
    if not (work / "corpus").is_dir():
        raise ValueError(f"{work} holds no regenerated corpus (work/corpus); run the suite's regenerate stage first")
    members = {str(p.relative_to(work)): p.read_bytes() for p in _member_files(work)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), 0o644
            info.mtime = 0  # byte-identical archives from identical data
            tar.addfile(info, io.BytesIO(blob))
    data = lzma.compress(buf.getvalue(), preset=9)
    manifest = {
        "archive": archive.name, "sha256": _sha256(data), "bytes": len(data),
        "members": {name: _sha256(blob) for name, blob in members.items()},
        "counts": corpus_counts(work), "sources": sources, "generator": generator,
        "overlap": json.loads((work / "data_report.json").read_text()) if (work / "data_report.json").exists() else None,
    }
    write_bytes(archive, data)
    write_json(manifest_path(archive), manifest)
    return manifest


def manifest_path(archive: str | Path) -> Path:
    archive = Path(archive)
    return archive.with_name(archive.name + ".manifest.json")


def read_corpus_members(archive: str | Path) -> dict[str, bytes]:
    """The members of `archive` (name -> bytes), checked against its manifest: the archive's and
    every member's sha256."""
    import lzma

    archive = Path(archive)
    if not archive.exists():
        raise ValueError(f"corpus archive {archive} does not exist")
    man_file = manifest_path(archive)
    if not man_file.exists():
        raise ValueError(f"corpus archive {archive} has no manifest ({man_file.name})")
    manifest = json.loads(man_file.read_text())
    data = archive.read_bytes()
    if _sha256(data) != manifest["sha256"]:
        raise ValueError(f"corpus archive {archive} is corrupt: its sha256 does not match {man_file.name}")
    try:
        raw = lzma.decompress(data)
    except lzma.LZMAError as e:
        raise ValueError(f"corpus archive {archive} is corrupt: {e}") from None
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
        for info in tar.getmembers():
            if not info.isfile() or info.name.startswith(("/", "..")) or ".." in Path(info.name).parts:
                raise ValueError(f"corpus archive {archive} holds an unexpected member {info.name!r}")
            members[info.name] = tar.extractfile(info).read()
    if {k: _sha256(v) for k, v in members.items()} != manifest["members"]:
        raise ValueError(f"corpus archive {archive}: its members do not match {man_file.name}")
    return members


def unpack_corpus(archive: str | Path, work: str | Path) -> dict:
    """Check `archive` against its manifest and place its members under `work`. Members already
    present must be byte-identical (a work folder made from other data is refused, not mixed)."""
    work = Path(work)
    members = read_corpus_members(archive)
    manifest = json.loads(manifest_path(archive).read_text())
    for name, blob in members.items():
        path = work / name
        if path.exists() and path.read_bytes() != blob:
            raise ValueError(f"{path} differs from the shipped corpus; use an empty work_dir to train on it")
    for name, blob in sorted(members.items()):
        if not (work / name).exists():
            write_bytes(work / name, blob)
    return manifest
