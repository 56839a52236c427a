"""A prompt cache that outlives the process: KV cells of token prefixes saved to a folder.

When a sequence's KV cells are about to be dropped (its slot is given to a prompt that does not
continue it, the model is unloaded, the server stops), the runner asks the backend for the
sequence's state (`Context.seq_state_get`) and `PromptCache.save` writes it, with the exact
tokens it holds, to a file of the cache folder. A later request, in this process or after a
restart, whose prompt starts with a saved prefix gets those cells back (`Context.seq_state_set`)
instead of evaluating them (see `power.engine.runner`).

The key of a file (`model_key`) covers what the cells depend on: the model file (its blob
digest), the LoRA adapters and their scales, the vision projector, the load options that change
the cells (num_ctx, KV cache type, flash attention) and the backend's state format (llama.cpp's
version). A lookup compares the stored tokens themselves with the prompt, never only a hash:
two prompts that differ in their last token share all but that token, nothing more. Prefixes
holding an image are never saved (the runner's rule), nor cells that a context shift moved.

File format (version `FORMAT_VERSION`), written to a temporary file, fsynced, then renamed::

    magic "PWRPCACH" | u32 version | u32 header length | header (JSON: key, n_tokens,
    n_payload) | int32 tokens[n_tokens] | payload (the backend's state) | sha256 of all before

A file that is truncated, corrupt (checksum), of another format version or unreadable is
removed when met (at `open` for its header, at `read` for the whole) and never used.

Bounds: the files take at most `max_bytes` (least recently used first out; a hit refreshes the
file's mtime, which is the "last use" across restarts); a prefix shorter than `min_tokens` is
not saved. `max_bytes` 0 disables the cache.

Threading: `open`, `save` and `read` do their file I/O in worker threads
(`trio.to_thread.run_sync`); the index (`entries`) is read and changed on the trio thread only,
so `lookup` and `covers` are cheap synchronous calls (a comparison of token lists). Several
processes may share a folder; each sees the others' files from its next `open`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from power.engine.scheduler import common_prefix

if TYPE_CHECKING:
    from power.engine.loadspec import LoadSpec

log = logging.getLogger(__name__)

MAGIC = b"PWRPCACH"
FORMAT_VERSION = 1
SUFFIX = ".pcache"
_FIXED = struct.Struct("<8sII")  # magic, version, header length
_CHECKSUM_BYTES = 32
_MAX_HEADER = 1 << 16
#: Temporary files of saves older than this (a crashed process's) are removed by `open`.
STALE_TEMP_SECONDS = 3600.0
_BLOB_NAME = re.compile(r"sha256-([0-9a-f]{64})")


class CorruptEntry(ValueError):
    """A cache file that must not be used (and is removed)."""


@attrs.define(eq=False)
class Entry:
    """One saved prefix: its file name, model key, exact tokens, size and last use."""

    name: str
    key: str
    tokens: list[int]
    n_bytes: int
    last_used: float


def file_identity(path: str | None) -> str | None:
    """What identifies a model file's content: its blob digest when it is a store blob
    (`sha256-<hex>`), else its real path, size and modification time."""
    if path is None:
        return None
    match = _BLOB_NAME.fullmatch(Path(path).name)
    if match:
        return f"sha256:{match.group(1)}"
    try:
        stat = os.stat(path)
        return f"file:{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        return f"file:{os.path.realpath(path)}"


def model_key(spec: LoadSpec, state_format: str) -> str:
    """The cache key of a model loaded per `spec` (blocking: stats files). Two loads share
    cache files only if everything their KV cells depend on is equal."""
    identity = {
        "state_format": state_format,
        "model": file_identity(spec.model_path),
        "adapters": [[file_identity(a), 1.0] for a in spec.adapters],  # scale: see open_model
        "projector": file_identity(spec.projector_path),
        "num_ctx": spec.num_ctx,
        "kv_cache_type": spec.kv_cache_type,
        "flash_attention": spec.flash_attention,
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def entry_name(key: str, tokens: Sequence[int]) -> str:
    digest = hashlib.sha256(key.encode() + array("i", tokens).tobytes()).hexdigest()
    return f"{key[:16]}-{digest[:32]}{SUFFIX}"


# ---------------------------------------------------------------- the file format (blocking)


def encode(key: str, tokens: Sequence[int], payload: bytes) -> list[bytes]:
    """The parts of a cache file, in order (checksum last)."""
    header = json.dumps(
        {"key": key, "n_tokens": len(tokens), "n_payload": len(payload)}, sort_keys=True
    ).encode()
    parts = [_FIXED.pack(MAGIC, FORMAT_VERSION, len(header)), header, array("i", tokens).tobytes()]
    checksum = hashlib.sha256()
    for part in parts:
        checksum.update(part)
    checksum.update(payload)
    return [*parts, payload, checksum.digest()]


def _read_head(f: Any) -> tuple[dict, list[int], bytes]:
    """Header, tokens, and the raw bytes read so far (for the checksum); raises CorruptEntry."""
    fixed = f.read(_FIXED.size)
    if len(fixed) != _FIXED.size:
        raise CorruptEntry("truncated")
    magic, version, n_header = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise CorruptEntry("not a prompt cache file")
    if version != FORMAT_VERSION:
        raise CorruptEntry(f"format version {version}, expected {FORMAT_VERSION}")
    if n_header > _MAX_HEADER:
        raise CorruptEntry("implausible header")
    raw_header = f.read(n_header)
    try:
        header = json.loads(raw_header)
        n_tokens = int(header["n_tokens"])
        int(header["n_payload"])
        str(header["key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"bad header: {exc}") from None
    raw_tokens = f.read(4 * n_tokens)
    if len(raw_tokens) != 4 * n_tokens:
        raise CorruptEntry("truncated")
    tokens = array("i")
    tokens.frombytes(raw_tokens)
    return header, tokens.tolist(), fixed + raw_header + raw_tokens


def read_header(path: Path) -> tuple[str, list[int], int]:
    """(key, tokens, file size) of a cache file, checking its length; raises CorruptEntry."""
    with open(path, "rb") as f:
        header, tokens, head = _read_head(f)
        size = os.fstat(f.fileno()).st_size
    if size != len(head) + header["n_payload"] + _CHECKSUM_BYTES:
        raise CorruptEntry("truncated or overlong")
    return header["key"], tokens, size


def read_payload(path: Path, key: str, tokens: Sequence[int]) -> bytearray:
    """The state saved in `path` after checking everything: format, key, the exact tokens, the
    length and the checksum. Raises CorruptEntry (or OSError)."""
    with open(path, "rb") as f:
        header, stored, head = _read_head(f)
        if header["key"] != key or stored != list(tokens):
            raise CorruptEntry("its key or tokens changed")
        n_payload = header["n_payload"]
        payload = bytearray(n_payload)  # read in place (the GIL is free meanwhile)
        n_read = f.readinto(payload)
        checksum = f.read(_CHECKSUM_BYTES + 1)
    if n_read != n_payload or len(checksum) != _CHECKSUM_BYTES:
        raise CorruptEntry("truncated or overlong")
    digest = hashlib.sha256(head)
    digest.update(payload)
    if digest.digest() != checksum:
        raise CorruptEntry("checksum mismatch")
    return payload


def write_atomically(path: Path, parts: Sequence[bytes]) -> int:
    """Write `parts` to `path` through a temporary file, fsync, rename, fsync the folder."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return sum(len(p) for p in parts)


# ---------------------------------------------------------------- the cache


class PromptCache:
    """The cache folder and its in-memory index; see the module docstring.

    `on_event(kind, amount)` reports "save" (bytes written), "restore" (tokens restored) and
    "remove" (files dropped: LRU or corrupt), e.g. to Prometheus counters."""

    def __init__(
        self,
        folder: str | Path,
        *,
        max_bytes: int,
        min_tokens: int = 256,
        on_event: Callable[[str, int], None] | None = None,
        run_sync: Callable[..., Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder)
        self.wall_clock = wall_clock
        self.max_bytes = max(0, max_bytes)
        self.min_tokens = max(1, min_tokens)
        self.on_event = on_event or (lambda kind, amount: None)
        self.run_sync = run_sync or trio.to_thread.run_sync
        self.entries: dict[str, Entry] = {}
        self.n_pending_bytes = 0  # saves under way
        self.n_saves = 0
        self.n_restores = 0
        self.n_restored_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def n_bytes(self) -> int:
        return sum(e.n_bytes for e in self.entries.values())

    # ------------------------------------------------------------------ index (trio thread)
    async def open(self) -> None:
        """Create the folder and index its files (in a worker thread); corrupt, stale-version
        and leftover temporary files are removed. Never raises: a folder that cannot be used
        disables the cache (logged)."""
        if not self.enabled:
            return
        try:
            entries = await self.run_sync(self._scan)
        except OSError as exc:
            log.warning("prompt cache %s disabled: %s", self.folder, exc)
            self.max_bytes = 0
            return
        self.entries = {e.name: e for e in entries}
        await self._enforce_bound()

    def _scan(self) -> list[Entry]:
        self.folder.mkdir(parents=True, exist_ok=True)
        entries = []
        now = time.time()
        for path in self.folder.iterdir():
            try:
                if path.name.endswith(".tmp"):
                    if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                        path.unlink()
                    continue
                if not path.name.endswith(SUFFIX):
                    continue
                key, tokens, size = read_header(path)
                if path.name != entry_name(key, tokens):
                    raise CorruptEntry("its name does not match its content")
                entries.append(Entry(path.name, key, tokens, size, path.stat().st_mtime))
            except CorruptEntry as exc:
                log.warning("removing prompt cache file %s: %s", path.name, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError as exc:
                log.warning("skipping prompt cache file %s: %s", path.name, exc)
        return entries

    def lookup(self, key: str, prompt: Sequence[int], limit: int) -> tuple[Entry, int] | None:
        """The saved prefix of model `key` that shares the longest prefix with `prompt`
        (at most `limit` tokens), and that length; None when none shares `min_tokens`."""
        best: tuple[Entry, int] | None = None
        prompt = list(prompt)
        for entry in self.entries.values():
            if entry.key != key:
                continue
            n = min(common_prefix(entry.tokens, prompt), limit)
            if n >= self.min_tokens and (best is None or n > best[1]):
                best = (entry, n)
        return best

    def covers(self, key: str, tokens: Sequence[int]) -> bool:
        """Whether a saved prefix of model `key` starts with all of `tokens` already."""
        n = len(tokens)
        tokens = list(tokens)
        return any(
            e.key == key and len(e.tokens) >= n and e.tokens[:n] == tokens
            for e in self.entries.values()
        )

    def worth_saving(self, key: str, tokens: Sequence[int], n_bytes: int) -> bool:
        return (
            self.enabled
            and len(tokens) >= self.min_tokens
            and n_bytes <= self.max_bytes
            and self.n_pending_bytes + n_bytes <= self.max_bytes
            and not self.covers(key, tokens)
        )

    # ------------------------------------------------------------------ saving, reading
    async def save(self, key: str, tokens: Sequence[int], payload: bytes) -> bool:
        """Write one prefix's state (in a worker thread), then drop least recently used files
        beyond `max_bytes`. Never raises an Exception: a failed save is logged and forgotten.
        Cancellation: a write that has started completes (the thread is not abandoned)."""
        if not self._reserve(key, tokens, payload):
            return False
        return await self._write(key, list(tokens), payload)

    def save_soon(
        self, nursery: trio.Nursery, key: str, tokens: Sequence[int], payload: bytes
    ) -> bool:
        """`save` in a task of `nursery`; the payload's bytes count against `max_bytes` from
        now on (saves under way never hold more than that in memory)."""
        if not self._reserve(key, tokens, payload):
            return False
        nursery.start_soon(self._write, key, list(tokens), payload)
        return True

    def _reserve(self, key: str, tokens: Sequence[int], payload: bytes) -> bool:
        if not self.worth_saving(key, tokens, len(payload)):
            return False
        self.n_pending_bytes += len(payload)
        return True

    async def _write(self, key: str, tokens: list[int], payload: bytes) -> bool:
        n_bytes = len(payload)
        name = entry_name(key, tokens)
        try:
            size = await self.run_sync(self._write_sync, self.folder / name, key, tokens, payload)
        except Exception as exc:  # noqa: BLE001 - a cache must never fail its caller
            log.warning("could not save a prompt cache file: %s", exc)
            return False
        finally:
            self.n_pending_bytes -= n_bytes
        self.entries[name] = Entry(name, key, tokens, size, self.wall_clock())
        self.n_saves += 1
        self.on_event("save", size)
        log.info("prompt cache: saved %d tokens (%.1f MiB)", len(tokens), size / 2**20)
        await self._enforce_bound()
        return True

    async def read(self, entry: Entry) -> bytearray | None:
        """The state saved for `entry`, checked (in a worker thread), its last use refreshed;
        None (and the file removed) when it is missing, corrupt or stale."""

        def read_sync() -> bytearray:
            path = self.folder / entry.name
            payload = read_payload(path, entry.key, entry.tokens)
            with contextlib.suppress(OSError):
                os.utime(path)
            return payload

        try:
            payload = await self.run_sync(read_sync)
        except (CorruptEntry, OSError) as exc:
            log.warning("prompt cache file %s unusable, removed: %s", entry.name, exc)
            await self._remove([entry])
            return None
        entry.last_used = self.wall_clock()
        return payload

    @staticmethod
    def _write_sync(path: Path, key: str, tokens: list[int], payload: bytes) -> int:
        # the checksum too is computed here, off the trio thread (tens of ms for a long prefix)
        return write_atomically(path, encode(key, tokens, payload))

    def restored(self, n_tokens: int) -> None:
        """The runner restored `n_tokens` prompt tokens from a file."""
        self.n_restores += 1
        self.n_restored_tokens += n_tokens
        self.on_event("restore", n_tokens)

    async def _enforce_bound(self) -> None:
        over = self.n_bytes - self.max_bytes
        if over <= 0:
            return
        victims = []
        for entry in sorted(self.entries.values(), key=lambda e: e.last_used):
            if over <= 0:
                break
            victims.append(entry)
            over -= entry.n_bytes
        await self._remove(victims)

    async def _remove(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.entries.pop(entry.name, None)
        if not entries:
            return

        def unlink() -> None:
            for entry in entries:
                with contextlib.suppress(OSError):
                    (self.folder / entry.name).unlink()

        with trio.CancelScope(shield=True):
            await self.run_sync(unlink)
        self.on_event("remove", len(entries))
