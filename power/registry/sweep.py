"""What `Store.prune` removes from `blobs/`, `.tmp/` and `manifests/` by age and reference (the
store lock is held by the caller; sessions and partial downloads have rules of their own, in
`power.registry.locks` and `power.registry.partial`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from power.registry.locks import TOKEN_RE

_BLOB_NAME_RE = re.compile(r"sha256-[0-9a-f]{64}")
_PARTIAL_RE = re.compile(r"sha256-[0-9a-f]{64}-partial.*")


def remove_old_unreferenced(blobs: Path, keep: set[str], cutoff: float) -> list[str]:
    """Remove the blobs whose digest is not in `keep` and the foreign files (not blobs, not
    partial downloads) last modified before `cutoff`. Returns digests for blobs, names for
    other files. NFS's `.nfs*` placeholders (deleted files still open somewhere) are left."""
    removed: list[str] = []
    if not blobs.is_dir():
        return removed
    for entry in os.scandir(blobs):
        if _PARTIAL_RE.fullmatch(entry.name) or entry.name.startswith(".nfs"):
            continue
        if _BLOB_NAME_RE.fullmatch(entry.name):
            name = "sha256:" + entry.name[len("sha256-") :]
            if name in keep:
                continue
        else:
            name = entry.name  # a foreign temporary
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed


def remove_old_temporaries(temp: Path, cutoff: float) -> list[str]:
    """Remove the entries of the temporaries folder that belong to no session (Ollama's, an
    older power's) and were last modified before `cutoff`; returns their names."""
    removed: list[str] = []
    if not temp.is_dir():
        return removed
    for entry in os.scandir(temp):
        if TOKEN_RE.fullmatch(entry.name):
            continue  # a session's folder: `locks.scan_sessions` decides
        try:
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return removed


def remove_empty_folders(base: Path) -> None:
    """Remove the empty folders below `base` (the manifests' model and namespace folders)."""
    if not base.is_dir():
        return
    for dirpath, _dirnames, _filenames in sorted(os.walk(base), reverse=True):
        if Path(dirpath) == base:
            continue
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
