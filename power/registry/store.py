"""The local model store, in Ollama's on-disk layout, so an existing Ollama store works as is and
Ollama can read what power writes.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   Docker schema-2 manifest (JSON)
    <root>/blobs/sha256-<64 hex>                        content-addressed blobs
    <root>/blobs/sha256-<64 hex>-partial[...]           downloads in progress (power's pull)
    <root>/.tmp/                                        power's temporaries (same filesystem)

Contracts:
- A blob is only ever created by renaming a complete, verified file into `blobs/`; a reader
  never sees a half-written blob. The same holds for manifests (temp file + rename).
- A manifest is written only when every blob it names is present (`MissingBlobError` otherwise),
  so a crash between blobs and manifest leaves unreferenced blobs, never a broken model.
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
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from power.registry.manifest import (
    MEDIA_TYPE_ADAPTER,
    MEDIA_TYPE_CONFIG,
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

__all__ = [
    "MEDIA_TYPE_ADAPTER",
    "MEDIA_TYPE_CONFIG",
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
    "Store",
    "StoreError",
    "StoredModel",
    "go_json_encode",
    "normalize_digest",
    "parse_digest",
    "sha256_bytes",
    "sha256_file",
]

log = logging.getLogger(__name__)

#: Blobs and temporaries younger than this are left alone by `prune`: they may belong to a
#: create or pull (of this or another process) that has not written its manifest yet.
PRUNE_GRACE_SECONDS = 3600.0

_BLOB_NAME_RE = re.compile(r"sha256-[0-9a-f]{64}")


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
        """A folder for temporaries on the blobs' filesystem (renames from it are atomic);
        `prune` removes what is left there after the grace period."""
        path = self.root / ".tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

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
        self, src: Path | str, expected_digest: str | None = None, *, move: bool | None = None
    ) -> tuple[str, bool]:
        """`add_blob_file`, also telling whether the blob is new (False: it was already there)."""
        src = Path(src)
        expected = normalize_digest(expected_digest) if expected_digest is not None else None
        if move is None:
            move = self._is_inside(src)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if move:
            actual = sha256_file(src)
            if expected is not None and actual != expected:
                raise DigestMismatchError(expected, actual)
            target = self.blob_path(actual)
            if target.exists():
                src.unlink(missing_ok=True)
                return actual, False
            os.chmod(src, 0o644)
            os.replace(src, target)
            return actual, True
        if expected is not None and self.has_blob(expected):
            # verify the source all the same: the caller asserted its digest
            actual = sha256_file(src)
            if actual != expected:
                raise DigestMismatchError(expected, actual)
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
            return actual, self._commit_temp(temp_path, actual)

    def add_blob_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store `data` as a blob (atomically) and return its digest."""
        return self.store_blob_bytes(data, expected_digest)[0]

    def store_blob_bytes(self, data: bytes, expected_digest: str | None = None) -> tuple[str, bool]:
        """`add_blob_bytes`, also telling whether the blob is new."""
        actual = sha256_bytes(data)
        if expected_digest is not None and normalize_digest(expected_digest) != actual:
            raise DigestMismatchError(normalize_digest(expected_digest), actual)
        if self.has_blob(actual):
            return actual, False
        with self._temp_file() as (file, temp_path):
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            return actual, self._commit_temp(temp_path, actual)

    def _commit_temp(self, temp_path: Path, digest: str) -> bool:
        """Rename a complete temporary into place; False when the blob already existed."""
        target = self.blob_path(digest)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return False
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, target)
        return True

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
        """Write these exact manifest bytes for `name`, atomically (temp file + rename).

        Raises ValueError when `data` is not a manifest and MissingBlobError when a blob it
        names is absent; nothing is written then. An existing manifest of the same name in
        another case is replaced in place.
        """
        manifest = Manifest.from_json(data)
        for digest in manifest.digests():
            if not self.has_blob(digest):
                raise MissingBlobError(digest)
        path = self.find_manifest_path(name) or self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix="manifest-", dir=self.temp_dir())
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return path

    def copy_manifest(self, source: ModelName, destination: ModelName) -> bool:
        """Copy the manifest bytes of `source` to `destination`; False when source is absent."""
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
        """Remove those of `digests` that no manifest references any more (what Ollama does for
        the layers of a deleted or replaced model; not subject to `noprune`). Returns the
        digests removed."""
        referenced = self.referenced_digests()
        removed = []
        for digest in digests:
            try:
                digest = normalize_digest(digest)
            except InvalidDigestError:
                continue
            if digest in referenced:
                continue
            if self.delete_blob(digest):
                removed.append(digest)
        return removed

    def prune(self, grace_seconds: float = PRUNE_GRACE_SECONDS) -> list[str]:
        """Remove unreferenced blobs, stale partial downloads and stale temporaries; files
        modified less than `grace_seconds` ago are kept. Does nothing when `noprune` is set.
        Returns what was removed: digests for blobs, file names for anything else."""
        if self.noprune:
            return []
        removed: list[str] = []
        cutoff = time.time() - grace_seconds
        referenced = self.referenced_digests()
        if self.blobs_dir.is_dir():
            for entry in os.scandir(self.blobs_dir):
                if not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                if _BLOB_NAME_RE.fullmatch(entry.name):
                    digest = "sha256:" + entry.name[len("sha256-") :]
                    if digest in referenced:
                        continue
                    removed_name = digest
                else:
                    removed_name = entry.name  # a partial download or a foreign temporary
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed.append(removed_name)
        temp = self.root / ".tmp"
        if temp.is_dir():
            for entry in os.scandir(temp):
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
        self._remove_empty_manifest_dirs()
        if removed:
            log.info("pruned %d files from %s", len(removed), self.root)
        return removed

    def _remove_empty_manifest_dirs(self) -> None:
        base = self.manifests_dir
        if not base.is_dir():
            return
        for dirpath, _dirnames, _filenames in sorted(os.walk(base), reverse=True):
            if Path(dirpath) == base:
                continue
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
