"""Which code produced a result: the git commit and a digest of every source file a benchmark depends on.

Each benchmark module lists what its figures depend on in ``SOURCES`` (files or folders,
relative to the repository root); the timing helpers every benchmark shares are added here.
``python -m benchmarks`` stores the digests in the result file, and the results README says for
each file whether the code it was measured with is the code as it stands, or which source
files changed since. Standard library only.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Iterable

from benchmarks.measure import ROOT

# Every benchmark's figures also depend on the shared measurement code.
SHARED_SOURCES = ("benchmarks/common.py", "benchmarks/measure.py")
# What a source folder contributes: code and notebooks, not caches or data.
SOURCE_SUFFIXES = (".py", ".ipynb")


def source_files(paths: Iterable[str], root: Path = ROOT) -> list[str]:
    """The files behind ``paths`` (folders expanded to their ``.py``/``.ipynb`` files), relative to ``root``, sorted.

    A path that does not exist raises ``FileNotFoundError``: a benchmark must not claim a source it lacks.
    """
    files: set[str] = set()
    for name in (*SHARED_SOURCES, *paths):
        path = root / name
        if path.is_file():
            files.add(path.relative_to(root).as_posix())
        elif path.is_dir():
            files.update(found.relative_to(root).as_posix() for found in path.rglob("*")
                         if found.suffix in SOURCE_SUFFIXES and found.is_file() and "__pycache__" not in found.parts
                         and ".ipynb_checkpoints" not in found.parts)
        else:
            raise FileNotFoundError(f"benchmark source {name!r} not found under {root}")
    return sorted(files)


def source_digests(paths: Iterable[str], root: Path = ROOT) -> dict[str, str]:
    """``{file: sha256 of its bytes (first 16 hex digits)}`` for every file behind ``paths``."""
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest()[:16] for name in source_files(paths, root)}


def git_commit(root: Path = ROOT) -> str | None:
    """The checked-out commit of ``root``, or None unless ``root`` is the top of a git checkout.

    A folder inside some other repository (the kit copied into a project) gets None, not that
    repository's commit.
    """
    try:
        completed = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True,
                                   text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = completed.stdout.split("\n")
    if completed.returncode != 0 or len(lines) < 2 or Path(lines[0]).resolve() != Path(root).resolve():
        return None
    return lines[1].strip() or None


def code_record(paths: Iterable[str], root: Path = ROOT) -> dict:
    """What a result file stores about the code that produced it."""
    return {"commit": git_commit(root), "sources": source_digests(paths, root)}


def changed_sources(record: dict | None, paths: Iterable[str], root: Path = ROOT) -> list[str] | None:
    """Source files added, removed or changed since ``record`` was made; None when nothing was recorded."""
    if not record or "sources" not in record:
        return None
    then = record["sources"]
    try:
        now = source_digests(paths, root)
    except FileNotFoundError as error:  # a source the benchmark names is gone: say so rather than fail the report
        return [str(error)]
    return sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))


def describe(record: dict | None, paths: Iterable[str], root: Path = ROOT) -> str:
    """One phrase for the results README: measured with the code as it stands, or what changed since."""
    changed = changed_sources(record, paths, root)
    if changed is None:
        return "code version not recorded"
    commit = (record.get("commit") or "")[:7]
    at = f" (commit {commit})" if commit else ""
    if not changed:
        return f"measured with the code as it stands{at}"
    shown = ", ".join(f"`{name}`" for name in changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    return f"**code changed since this run{at}: {shown}**"
