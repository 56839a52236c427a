"""The local model store, in Ollama's on-disk layout, so an existing Ollama store works as is and
Ollama can read what power writes.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   Docker schema-2 manifest (JSON)
    <root>/blobs/sha256-<64 hex>                        content-addressed blobs
    <root>/blobs/sha256-<64 hex>-partial[...]           downloads in progress (`partial`)
    <root>/.tmp/<token>/                                each process's temporaries (`locks`)
    <root>/.locks/                                      lock files (`locks`)

Contracts:
- A blob is only ever created by renaming a complete, verified file into `blobs/`; a reader
  never sees a half-written blob. The same holds for manifests (temp file + rename).
- A manifest is written only when every blob it names is present (`MissingBlobError` otherwise),
  so a crash between blobs and manifest leaves unreferenced blobs, never a broken model.
- Several processes may share a store (`locks` tells how): writing, copying and deleting
  manifests, committing blobs and removing them happen under the store lock; an operation pins
  the blobs it will reference (`pins`), and nothing removes a pinned or referenced blob.
- `prune` (run at start-up and after each delete) removes what crashed processes left: their
  temporaries and the blobs their creates had added, stale partial downloads (the rule is in
  `partial`), and, unless `noprune`, unreferenced blobs older than `PRUNE_GRACE_SECONDS`.
- Error messages name models and digests, never a path of the server (they reach clients):
  `public_os_error` turns an OSError into such a StoreError.
- Another process may change a manifest at any time: a cache of what was read from one must be
  keyed on the file's (st_ino, st_mtime_ns, st_size). Every write is a rename of a new file,
  so the inode changes even when a coarse mtime and the size do not.
- Names are looked up case-insensitively; writing a name that exists in another case replaces
  that manifest instead of adding a second one.
- Manifests power writes are byte-for-byte what Ollama writes for the same content (compact JSON
  as Go's encoder produces it, then a newline); manifests pulled from a registry are kept as the
  exact bytes received (`write_manifest_bytes`), so their digest stays the registry's.
- Digests are `sha256:<64 hex>`; anything else raises `InvalidDigestError` before any path is
  built from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from power.registry.locks import (
    TEMP_DIR,
    Pins,
    Session,
    existing_session,
    scan_sessions,
    session_of,
    store_lock,
)
from power.registry.manifest import (
    MEDIA_TYPE_ADAPTER,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DRAFT,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_PROJECTOR,
    MEDIA_TYPE_PROMPT,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    DigestMismatchError,
    InvalidDigestError,
    Layer,
    Manifest,
    MissingBlobError,
    StoreError,
    go_json_encode,
    normalize_digest,
    parse_digest,
    sha256_bytes,
    sha256_file,
)
from power.registry.names import InvalidNameError, ModelName
from power.registry.partial import PARTIAL_KEEP_SECONDS, sweep_partials
from power.registry.sweep import (
    remove_empty_folders,
    remove_old_temporaries,
    remove_old_unreferenced,
)

__all__ = [
    "MEDIA_TYPE_ADAPTER",
    "MEDIA_TYPE_CONFIG",
    "MEDIA_TYPE_DRAFT",
    "MEDIA_TYPE_LICENSE",
    "MEDIA_TYPE_MANIFEST",
    "MEDIA_TYPE_MESSAGES",
    "MEDIA_TYPE_MODEL",
    "MEDIA_TYPE_PARAMS",
    "MEDIA_TYPE_PROJECTOR",
    "MEDIA_TYPE_PROMPT",
    "MEDIA_TYPE_SYSTEM",
    "MEDIA_TYPE_TEMPLATE",
    "PRUNE_GRACE_SECONDS",
    "DigestMismatchError",
    "InvalidDigestError",
    "Layer",
    "Manifest",
    "MissingBlobError",
    "ModelNotFoundError",
    "Pins",
    "Store",
    "StoreError",
    "StoredModel",
    "go_json_encode",
    "normalize_digest",
    "parse_digest",
    "public_os_error",
    "sha256_bytes",
    "sha256_file",
]

log = logging.getLogger(__name__)

#: Unreferenced blobs younger than this are left alone by `prune`: a client may have uploaded
#: them for a create it has not sent yet, or a crashed pull fetched them (a retry skips them).
#: Foreign temporaries (not in a session's folder) get the same grace.
PRUNE_GRACE_SECONDS = 3600.0


def public_os_error(error: OSError, action: str) -> StoreError:
    """A StoreError for a failed file operation that names no path (`action: No such file or
    directory`): error messages reach remote clients."""
    return StoreError(f"{action}: {error.strerror or type(error).__name__}")


class ModelNotFoundError(LookupError):
    """No model of that name in the store (404, `model 'NAME' not found`)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name

    def __str__(self) -> str:
        return self.args[0]


@attrs.define
class StoredModel:
    """One manifest found in the store."""

    name: ModelName
    manifest: Manifest
    digest: str  # sha256 hex of the manifest file (no "sha256:" prefix, as /api/tags shows it)
    size: int
    modified_at: datetime
    path: Path


# ---------------------------------------------------------------- store


def _noprune_from_env(environ: dict[str, str] | os._Environ[str]) -> bool:
    for key in ("POWER_NOPRUNE", "OLLAMA_NOPRUNE"):
        value = environ.get(key)
        if value:
            return value.strip().lower() not in ("0", "false", "no", "off")
    return False


class Store:
    """A model store rooted at `root`. Methods are synchronous file operations; call them from
    trio through `trio.to_thread.run_sync` when they may take long (hashing big files)."""

    def __init__(self, root: Path | str, *, noprune: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.noprune = noprune
        self._lock = store_lock(self.root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, noprune={self.noprune})"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Store:
        """Root from POWER_MODELS, else OLLAMA_MODELS, else ~/.ollama/models (Ollama's default);
        `noprune` from POWER_NOPRUNE / OLLAMA_NOPRUNE."""
        env = os.environ if environ is None else environ
        root = env.get("POWER_MODELS") or env.get("OLLAMA_MODELS")
        path = Path(root).expanduser() if root else Path.home() / ".ollama" / "models"
        return cls(path, noprune=_noprune_from_env(env))

    # ------------------------------------------------------------ paths

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    def temp_dir(self) -> Path:
        """This process's folder for temporaries, on the blobs' filesystem (renames from it are
        atomic); `prune` removes it once the process is gone."""
        return session_of(self.root).temp_dir

    # ------------------------------------------------------------ coordination

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the store lock (re-entrant; shared by every Store of this root in the process,
        and excluding other processes): a block that changes which manifests exist or which
        blobs they need runs under it. Keep such blocks short: no hashing, no network."""
        return self._lock.hold()

    @contextlib.contextmanager
    def pins(self) -> Iterator[Pins]:
        """Pins for one operation: the blobs pinned (`Pins.add`, or created through the
        `store_blob_*` methods with `pins=`) are kept by every process until the block ends."""
        pins = self.open_pins()
        try:
            yield pins
        finally:
            pins.close()

    def open_pins(self) -> Pins:
        """`pins()` for async callers, which close them (blocking) in a worker thread."""
        return Pins(session_of(self.root), self._lock).open()

    def _commit(self, temp_path: Path, digest: str, pins: Pins | None) -> bool:
        """Rename a complete file into place as blob `digest` (under the store lock); when the
        blob exists the file is removed instead and the blob's grace restarts. True if new."""
        target = self.blob_path(digest)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        with self.lock():
            if target.exists():
                if pins is not None:
                    pins.add([digest])
                temp_path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    os.utime(target)
                return False
            if pins is not None:
                pins.add_created(digest)
            os.chmod(temp_path, 0o644)
            os.replace(temp_path, target)
            return True

    def blob_path(self, digest: str) -> Path:
        """`blobs/sha256-<hex>` (the file may not exist). Raises InvalidDigestError."""
        return self.blobs_dir / f"sha256-{parse_digest(digest)}"

    def partial_path(self, digest: str) -> Path:
        """Where an in-progress download of `digest` lives: `blobs/sha256-<hex>-partial`.
        Its folder exists on return. The downloader may put side files next to it whose names
        start with this name; `prune` removes all of them once stale."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        return self.blobs_dir / f"sha256-{parse_digest(digest)}-partial"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        return self.blob_path(digest).stat().st_size

    # ------------------------------------------------------------ blobs

    def _is_inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def add_blob_file(
        self, src: Path | str, expected_digest: str | None = None, *, move: bool | None = None
    ) -> str:
        """Put the file `src` into the store as a blob and return its `sha256:<hex>` digest.

        `move=None` moves a file that already lies inside the store (a partial download, a
        temporary) and copies any other; the copy is hashed while it is written. When
        `expected_digest` is given and differs, DigestMismatchError is raised, nothing is added
        and a file that would have been moved is left where it was. The blob appears by an atomic
        rename; when it already exists it is kept (same content) and a moved `src` is removed.
        """
        return self.store_blob_file(src, expected_digest, move=move)[0]

    def store_blob_file(
        self,
        src: Path | str,
        expected_digest: str | None = None,
        *,
        move: bool | None = None,
        pins: Pins | None = None,
    ) -> tuple[str, bool]:
        """`add_blob_file`, also telling whether the blob is new (False: it was already there).
        With `pins`, the blob is pinned (and, when new, marked as created by that operation)
        before it appears."""
        src = Path(src)
        expected = normalize_digest(expected_digest) if expected_digest is not None else None
        if move is None:
            move = self._is_inside(src)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if move:
            actual = sha256_file(src)
            if expected is not None and actual != expected:
                raise DigestMismatchError(expected, actual)
            return actual, self._commit(src, actual, pins)
        if expected is not None and self.has_blob(expected):
            # verify the source all the same: the caller asserted its digest
            actual = sha256_file(src)
            if actual != expected:
                raise DigestMismatchError(expected, actual)
            if pins is not None:
                pins.add([actual])
            return actual, False
        with self._temp_file() as (file, temp_path):
            digest = hashlib.sha256()
            with open(src, "rb") as source:
                while chunk := source.read(1 << 22):
                    digest.update(chunk)
                    file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
            actual = "sha256:" + digest.hexdigest()
            if expected is not None and actual != expected:
                raise DigestMismatchError(expected, actual)
            return actual, self._commit(temp_path, actual, pins)

    def add_blob_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store `data` as a blob (atomically) and return its digest."""
        return self.store_blob_bytes(data, expected_digest)[0]

    def store_blob_bytes(
        self, data: bytes, expected_digest: str | None = None, *, pins: Pins | None = None
    ) -> tuple[str, bool]:
        """`add_blob_bytes`, also telling whether the blob is new; `pins` as for
        `store_blob_file`."""
        actual = sha256_bytes(data)
        if expected_digest is not None and normalize_digest(expected_digest) != actual:
            raise DigestMismatchError(normalize_digest(expected_digest), actual)
        if pins is not None:
            pins.add([actual])
        if self.has_blob(actual):
            return actual, False
        with self._temp_file() as (file, temp_path):
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            return actual, self._commit(temp_path, actual, pins)

    @contextlib.contextmanager
    def _temp_file(self) -> Iterator[tuple[Any, Path]]:
        """A new temporary in `temp_dir()` as (binary file, path); removed on exit unless it was
        renamed away meanwhile."""
        fd, name = tempfile.mkstemp(prefix="blob-", dir=self.temp_dir())
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as file:
                yield file, path
        finally:
            path.unlink(missing_ok=True)

    def delete_blob(self, digest: str) -> bool:
        """Remove one blob whatever references it (the HTTP DELETE route); True if it existed."""
        path = self.blob_path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    # ------------------------------------------------------------ manifests

    def manifest_path(self, name: ModelName) -> Path:
        """The path a manifest for `name` has when written with this exact case."""
        return self.manifests_dir.joinpath(*name.path_parts())

    def find_manifest_path(self, name: ModelName) -> Path | None:
        """The existing manifest file for `name`, matching each path part case-insensitively
        (an exact-case match wins); None when there is none."""
        exact = self.manifest_path(name)
        if exact.is_file():
            return exact
        directory = self.manifests_dir
        for i_part, part in enumerate(name.path_parts()):
            try:
                entries = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                return None
            matches = sorted(entry for entry in entries if entry.lower() == part.lower())
            if not matches:
                return None
            chosen = part if part in matches else matches[0]
            directory = directory / chosen
            if i_part == 3:
                return directory if directory.is_file() else None
        return None

    def stored_name(self, name: ModelName) -> ModelName | None:
        """The name as the store spells it (case), or None when it is not in the store."""
        path = self.find_manifest_path(name)
        if path is None:
            return None
        parts = path.relative_to(self.manifests_dir).parts
        try:
            return ModelName.from_path_parts(parts)
        except InvalidNameError:
            return None

    def read_manifest_bytes(self, name: ModelName) -> bytes | None:
        path = self.find_manifest_path(name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def read_manifest(self, name: ModelName) -> Manifest | None:
        """The manifest of `name` (case-insensitive), None when absent. Raises StoreError when
        the file exists but is not a valid manifest."""
        data = self.read_manifest_bytes(name)
        if data is None:
            return None
        try:
            return Manifest.from_json(data)
        except ValueError as error:
            raise StoreError(f"manifest of {name.display} is invalid: {error}") from None

    def manifest_digest(self, name: ModelName) -> str | None:
        """sha256 hex (no `sha256:` prefix, as /api/tags shows it) of the manifest file."""
        data = self.read_manifest_bytes(name)
        return None if data is None else hashlib.sha256(data).hexdigest()

    def write_manifest(self, name: ModelName, manifest: Manifest) -> Path:
        """Write `manifest` for `name` in Ollama's format; see `write_manifest_bytes`."""
        return self.write_manifest_bytes(name, manifest.to_json())

    def write_manifest_bytes(self, name: ModelName, data: bytes) -> Path:
        """Write these exact manifest bytes for `name`, atomically (temp file + rename), under
        the store lock.

        Raises ValueError when `data` is not a manifest and MissingBlobError when a blob it
        names is absent; nothing is written then. An existing manifest of the same name in
        another case is replaced in place.
        """
        manifest = Manifest.from_json(data)
        fd, temp_name = tempfile.mkstemp(prefix="manifest-", dir=self.temp_dir())
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp_name, 0o644)
            with self.lock():
                for digest in manifest.digests():
                    if not self.has_blob(digest):
                        raise MissingBlobError(digest)
                path = self.find_manifest_path(name) or self.manifest_path(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return path

    def copy_manifest(self, source: ModelName, destination: ModelName) -> bool:
        """Copy the manifest bytes of `source` to `destination`; False when source is absent."""
        with self.lock():
            data = self.read_manifest_bytes(source)
            if data is None:
                return False
            src_path = self.find_manifest_path(source)
            dst_path = self.find_manifest_path(destination)
            if src_path is not None and dst_path is not None and src_path == dst_path:
                return True
            self.write_manifest_bytes(destination, data)
            return True

    def delete_manifest(self, name: ModelName) -> bool:
        """Remove the manifest of `name` (case-insensitive) and the folders it leaves empty;
        False when there was none. Blobs are not touched: see `remove_unreferenced`."""
        with self.lock():
            path = self.find_manifest_path(name)
            if path is None:
                return False
            path.unlink(missing_ok=True)
            directory = path.parent
            while directory != self.manifests_dir and self.manifests_dir in directory.parents:
                try:
                    directory.rmdir()
                except OSError:
                    break
                directory = directory.parent
            return True

    def iter_manifest_paths(self) -> Iterator[tuple[ModelName, Path]]:
        """(name, path) of every manifest file at manifests/*/*/*/* with a valid name."""
        base = self.manifests_dir
        if not base.is_dir():
            return
        for path in sorted(base.glob("*/*/*/*")):
            if not path.is_file():
                continue
            try:
                name = ModelName.from_path_parts(path.relative_to(base).parts)
            except InvalidNameError:
                log.warning("ignoring manifest with an invalid name: %s", path)
                continue
            yield name, path

    def list_models(self) -> list[StoredModel]:
        """Every valid manifest in the store (invalid ones are logged and skipped)."""
        models = []
        for name, path in self.iter_manifest_paths():
            try:
                data = path.read_bytes()
                stat = path.stat()
                manifest = Manifest.from_json(data)
            except (OSError, ValueError) as error:
                log.warning("ignoring unreadable manifest %s: %s", path, error)
                continue
            models.append(
                StoredModel(
                    name=name,
                    manifest=manifest,
                    digest=hashlib.sha256(data).hexdigest(),
                    size=manifest.size,
                    modified_at=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=UTC),
                    path=path,
                )
            )
        return models

    # ------------------------------------------------------------ pruning

    def referenced_digests(self) -> set[str]:
        """`sha256:<hex>` of every blob some readable manifest references."""
        referenced: set[str] = set()
        for _name, path in self.iter_manifest_paths():
            try:
                manifest = Manifest.from_json(path.read_bytes())
            except (OSError, ValueError):
                continue
            for digest in manifest.digests():
                try:
                    referenced.add(normalize_digest(digest))
                except InvalidDigestError:
                    continue
        return referenced

    def remove_unreferenced(self, digests: list[str] | set[str]) -> list[str]:
        """Remove those of `digests` that no manifest references and no live process pins any
        more (what Ollama does for the layers of a deleted or replaced model; not subject to
        `noprune`). Returns the digests removed."""
        with self.lock():
            scan = scan_sessions(self.root, self._session(), clean=False)
            keep = self.referenced_digests() | scan.live_pins
            removed = []
            for digest in digests:
                try:
                    digest = normalize_digest(digest)
                except InvalidDigestError:
                    continue
                if digest not in keep and self.delete_blob(digest):
                    removed.append(digest)
            return removed

    def _session(self) -> Session | None:
        """This process's session in the store, None when it has not started one."""
        return existing_session(self.root)

    def prune(self, grace_seconds: float = PRUNE_GRACE_SECONDS) -> list[str]:
        """Clean the store up; returns what was removed (digests for blobs, names otherwise).

        Always: the temporaries and session files of processes that are gone, the blobs their
        creates had added that nothing references or pins, partial downloads nobody can or needs
        to resume (see `power.registry.partial`), and, older than `grace_seconds`, temporaries
        outside any session folder. Unless `noprune`: blobs that no manifest references and no
        live process pins, older than `grace_seconds`, and foreign files in `blobs/` as old."""
        cutoff = time.time() - grace_seconds
        with self.lock():
            scan = scan_sessions(self.root, self._session())
            removed = list(scan.removed)
            keep = self.referenced_digests() | scan.live_pins
            for digest in sorted(scan.dead_created - keep):
                if self.delete_blob(digest):
                    removed.append(digest)
            removed += sweep_partials(self.root, time.time(), PARTIAL_KEEP_SECONDS)
            removed += remove_old_temporaries(self.root / TEMP_DIR, cutoff)
            if not self.noprune:
                removed += remove_old_unreferenced(self.blobs_dir, keep, cutoff)
            remove_empty_folders(self.manifests_dir)
        if removed:
            log.info("pruned %d files from the store", len(removed))
        return removed
