"""Blob downloads on disk: the partial file, its resume record, the lock of whoever fetches it,
and the rule for keeping them.

    <root>/blobs/sha256-<hex>-partial            the blob's bytes as they arrive (full size)
    <root>/blobs/sha256-<hex>-partial.json       which bytes of each part are on disk
    <root>/.locks/download-<hex>.lock            held by the one process fetching the blob

Only the holder of the download lock writes the partial file and its record, so two replicas
pulling the same blob never write it together: the second waits and then finds the blob in
place, or takes the download over where the first stopped (it crashed or was cancelled).

What `sweep_partials` keeps: the files of a download someone is fetching (its lock is held), and
an interrupted download that a retried pull can resume (a consistent record) for
`PARTIAL_KEEP_SECONDS` after its last write. It removes the rest: leftovers of a blob that is now
in the store, files without a usable record, stale record temporaries, and lock files nobody
holds. Other files named like partials (Ollama's `-partial-N`) are kept for the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import attrs

from power.registry.locks import LOCKS_DIR, FileLock

#: An interrupted download nobody is fetching is kept this long after its last write, so a pull
#: retried within that time resumes it; prune (and so the start-up sweep) removes it later.
PARTIAL_KEEP_SECONDS = 24 * 3600.0

_PARTIAL_NAME_RE = re.compile(r"sha256-([0-9a-f]{64})-partial(.*)")
_LOCK_NAME_RE = re.compile(r"download-([0-9a-f]{64})\.lock")


@attrs.define
class PartState:
    """One byte range of a blob: `size` bytes from `offset`, `completed` of them on disk."""

    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size


@attrs.define
class PartialRecord:
    """What of a blob's partial file is on disk; saved as JSON next to the partial file."""

    digest: str
    total: int
    parts: list[PartState]

    @property
    def completed(self) -> int:
        return sum(part.completed for part in self.parts)

    def to_json(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "total": self.total,
                "parts": [[part.offset, part.size, part.completed] for part in self.parts],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PartialRecord:
        data = json.loads(text)
        parts = [PartState(int(o), int(s), int(c)) for o, s, c in data["parts"]]
        return cls(digest=str(data["digest"]), total=int(data["total"]), parts=parts)

    def is_consistent(self, digest: str, total: int) -> bool:
        """The record describes this blob and its parts tile `0..total` exactly."""
        if self.digest != digest or self.total != total:
            return False
        position = 0
        for part in self.parts:
            if part.offset != position or part.size <= 0 or not 0 <= part.completed <= part.size:
                return False
            position += part.size
        return position == total or (total == 0 and not self.parts)


def record_path(partial: Path) -> Path:
    """The resume record of a partial file: `<partial>.json`."""
    return partial.with_name(partial.name + ".json")


def save_record(path: Path, record: PartialRecord) -> None:
    """Write the record atomically (temp file + rename), so a crash leaves the old or the new."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(record.to_json())
    os.replace(temp, path)


def read_record(
    partial: Path, digest: str | None = None, total: int | None = None
) -> PartialRecord | None:
    """The record of `partial` when it describes a resumable download (of `digest` and `total`
    bytes when given, else of what it says), else None."""
    try:
        record = PartialRecord.from_json(record_path(partial).read_text())
        size = partial.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    digest = record.digest if digest is None else digest
    total = record.total if total is None else total
    if not record.is_consistent(digest, total) or size != total:
        return None
    return record


def discard_partial(partial: Path) -> None:
    for path in (partial, record_path(partial)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def download_lock(root: Path, hex_digest: str) -> FileLock:
    """The lock of the download of blob `sha256:<hex_digest>` in the store at `root`."""
    return FileLock(root / LOCKS_DIR / f"download-{hex_digest}.lock", remove_on_release=True)


def sweep_partials(root: Path, now: float, keep_seconds: float = PARTIAL_KEEP_SECONDS) -> list[str]:
    """Remove the downloads nobody fetches that cannot or need not be resumed any more (see the
    module docstring); returns the names of the files removed."""
    blobs = root / "blobs"
    groups: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(blobs)) if blobs.is_dir() else []:
        match = _PARTIAL_NAME_RE.fullmatch(entry)
        if match:
            groups.setdefault(match.group(1), []).append(entry)
    locks = root / LOCKS_DIR
    for entry in sorted(os.listdir(locks)) if locks.is_dir() else []:
        match = _LOCK_NAME_RE.fullmatch(entry)
        if match:
            groups.setdefault(match.group(1), [])
    removed: list[str] = []
    for hex_digest, names in groups.items():
        lock = download_lock(root, hex_digest)
        if not lock.acquire(blocking=False):
            continue  # being fetched
        try:
            for name in _stale(blobs, hex_digest, names, now - keep_seconds):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(blobs / name)
                    removed.append(name)
        finally:
            lock.release()  # and its file goes
    return removed


def _stale(blobs: Path, hex_digest: str, names: list[str], cutoff: float) -> list[str]:
    """Which of a blob's partial files to remove (the caller holds its download lock)."""
    if (blobs / f"sha256-{hex_digest}").is_file():
        return names
    partial = blobs / f"sha256-{hex_digest}-partial"
    ours = {partial.name, record_path(partial).name}
    stale = [name for name in names if name == record_path(partial).name + ".tmp"]
    if ours & set(names):
        record = read_record(partial, "sha256:" + hex_digest)
        if record is None or _newest_mtime(blobs, ours) < cutoff:
            stale += sorted(ours & set(names))
    for name in names:
        if name not in ours and name not in stale and _newest_mtime(blobs, {name}) < cutoff:
            stale.append(name)
    return stale


def _newest_mtime(folder: Path, names: set[str]) -> float:
    newest = float("-inf")
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, (folder / name).stat().st_mtime)
    return newest
