"""Pull a model from an OCI registry into the store, resumably, as `ollama pull` does.

The contract of `pull_model`:

- Status events, in Ollama's order and shape: `{"status": "pulling manifest"}`; per blob
  `{"status": "pulling <12 hex>", "digest", "total", "completed"}` repeatedly (a blob already
  in the store reports `completed == total` at once); `{"status": "verifying sha256 digest"}`;
  `{"status": "writing manifest"}`; `{"status": "success"}`.
- A blob is fetched with ranged GETs in parts (one part below `PART_SIZE_MIN`, else parts of
  at least that size), a few parts at once across the whole pull. Its data lands in the store's
  partial file for the digest, and a JSON record next to it (`<partial>.json`) says how many bytes
  of each part are on disk, so an interrupted pull resumes where it stopped instead of fetching
  completed bytes again. A part that fails mid-body (connection reset, timeout) is resumed from
  its last byte under the client's `RetryPolicy`.
- A blob's sha256 is checked before it is moved into place (`Store.add_blob_file`). On a mismatch
  the partial data and its record are deleted and `RegistryError("digest mismatch, file must be
  downloaded again: want …, got …")` is raised; the manifest is not written.
- The manifest is written last, with exactly the bytes the registry served, so its digest matches
  the registry's and `update` can compare them.
- Two pulls in one process that need the same blob share one download: the second waits for the
  first (and reports the same progress), and takes over if the first was cancelled. Across
  processes sharing the store (replicas), the blob's download lock (`power.registry.partial`)
  lets one fetch it while the others wait, reporting its progress from its record, and then
  find the blob in place or resume the download where a dead or cancelled fetcher stopped.
- Every blob of the manifest is pinned for the whole pull (`Store.pins`), so a delete or prune
  of another model (in any process) cannot remove a blob the pull found already in the store.
- Errors never name a path of the server (`public_os_error`).
- An unknown model or tag raises `RegistryError("pull model manifest: file does not exist", 404)`
  and leaves the store unchanged. A registry that cannot be reached at all (its host name does
  not resolve, its port refuses) or that answers a 4xx other than 429 fails at once, without
  retries: waiting cannot heal those (`power.registry.oci`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import trio

from power.registry.names import ModelName
from power.registry.oci import (
    RegistryClient,
    RegistryError,
    RetryPolicy,
    is_cancellation,
    is_transient_transport_error,
    single_registry_error,
)
from power.registry.partial import (
    PartialRecord,
    PartState,
    discard_partial,
    download_lock,
    read_record,
    record_path,
    save_record,
)
from power.registry.store import (
    DigestMismatchError,
    Layer,
    Manifest,
    MissingBlobError,
    Store,
    normalize_digest,
    parse_digest,
    public_os_error,
)

__all__ = [
    "PartState",
    "PartialRecord",
    "install_manifest",
    "load_or_start_record",
    "plan_parts",
    "pull_model",
    "record_path",
]

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]

MiB = 1024 * 1024
#: Blobs below this size are fetched in one request; parts are never smaller.
PART_SIZE_MIN = 16 * MiB
#: Parts never grow past this, however large the blob.
PART_SIZE_MAX = 512 * MiB
#: A large blob is cut into about this many parts (within the size bounds above).
N_PARTS_TARGET = 16
#: How many parts one pull fetches at the same time, all blobs together.
N_PARALLEL_PARTS = 4
#: Received bytes are written to disk in pieces of this size.
WRITE_BUFFER_SIZE = 1 * MiB
#: The resume record is rewritten after at least this many new bytes of a part reach the disk.
RECORD_EVERY = 8 * MiB
#: How often a pull waiting for another process's download of a blob looks again.
DOWNLOAD_POLL_SECONDS = 0.25


def _no_progress(_event: dict) -> None:
    pass


# ---------------------------------------------------------------- the resume record


def plan_parts(total: int) -> list[PartState]:
    """Cut a blob of `total` bytes into parts (see the module constants)."""
    if total == 0:
        return []
    if total <= PART_SIZE_MIN:
        return [PartState(0, total)]
    part_size = min(max(math.ceil(total / N_PARTS_TARGET), PART_SIZE_MIN), PART_SIZE_MAX)
    return [
        PartState(offset, min(part_size, total - offset)) for offset in range(0, total, part_size)
    ]


def load_or_start_record(partial: Path, digest: str, total: int) -> PartialRecord:
    """The record of an earlier, interrupted download of this blob if it is usable, else a
    fresh plan with an empty, preallocated partial file. Call with the download lock held."""
    record = read_record(partial, digest, total)
    if record is not None:
        log.info("resuming %s at %d of %d bytes", digest, record.completed, total)
        return record
    record = PartialRecord(digest=digest, total=total, parts=plan_parts(total))
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("wb") as file:
        file.truncate(total)
    save_record(record_path(partial), record)
    return record


# ---------------------------------------------------------------- progress


@attrs.define
class BlobProgress:
    """Turns byte counts into `{"status": "<verb> <12 hex>", digest, total, completed}` events,
    at most one per `step` bytes or per `interval` seconds, always for the first and last."""

    progress: Progress
    verb: str
    digest: str
    total: int
    step: int = attrs.field(init=False)
    interval: float = 0.25
    _last_completed: int = -1
    _last_time: float = -math.inf

    def __attrs_post_init__(self) -> None:
        self.step = max(MiB, self.total // 200)

    def update(self, completed: int) -> None:
        now = trio.current_time()
        final = completed >= self.total
        if completed == self._last_completed:
            return
        if (
            not final
            and self._last_completed >= 0
            and completed - self._last_completed < self.step
            and now - self._last_time < self.interval
        ):
            return
        self._last_completed = completed
        self._last_time = now
        self.progress(
            {
                "status": f"{self.verb} {self.digest.removeprefix('sha256:')[:12]}",
                "digest": self.digest,
                "total": self.total,
                "completed": min(completed, self.total),
            }
        )


# ---------------------------------------------------------------- shared downloads


@attrs.define(eq=False)
class SharedDownload:
    """One blob being fetched in this process; later pulls of the same blob wait on it."""

    digest: str
    total: int
    completed: int = 0
    listeners: list[Callable[[int], None]] = attrs.Factory(list)
    finished: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None

    def report(self, completed: int) -> None:
        self.completed = completed
        for listener in list(self.listeners):
            listener(completed)


#: Downloads in progress in this process, by (store root, digest).
_in_flight: dict[tuple[str, str], SharedDownload] = {}


async def ensure_blob(
    store: Store,
    client: RegistryClient,
    layer: Layer,
    progress: Progress,
    limiter: trio.CapacityLimiter,
) -> None:
    """Make the store hold `layer`'s blob: skip it if present, join a download of it already
    running in this process, or fetch it."""
    digest, total = layer.digest, layer.size
    reporter = BlobProgress(progress, "pulling", digest, total)
    key = (os.path.realpath(store.root), normalize_digest(digest))
    while True:
        if store.has_blob(digest):
            reporter.update(total)
            return
        shared = _in_flight.get(key)
        if shared is None:
            break
        log.debug("pull blob %s: joining the download already under way", digest)
        shared.listeners.append(reporter.update)
        reporter.update(shared.completed)
        try:
            await shared.finished.wait()
        finally:
            shared.listeners.remove(reporter.update)
        if shared.error is not None and not is_cancellation(shared.error):
            if isinstance(shared.error, RegistryError):
                raise RegistryError(shared.error.message, shared.error.status)
            raise RegistryError(f"pull blob {digest}: {_describe(shared.error)}")
        # Finished (the loop sees the blob) or cancelled (the loop takes the download over).

    shared = SharedDownload(digest, total)
    shared.listeners.append(reporter.update)
    _in_flight[key] = shared
    try:
        await download_blob_once(store, client, digest, total, shared.report, limiter)
    except BaseException as error:
        shared.error = error
        raise
    finally:
        del _in_flight[key]
        shared.finished.set()


async def download_blob_once(
    store: Store,
    client: RegistryClient,
    digest: str,
    total: int,
    on_progress: Callable[[int], None],
    limiter: trio.CapacityLimiter,
) -> None:
    """Fetch one blob unless another process does: hold its download lock while fetching; while
    another process holds it, wait and report that process's progress (read from its record),
    then use the blob it stored or resume where it stopped."""
    lock = download_lock(store.root, parse_digest(digest))
    partial = Path(store.partial_path(digest))
    waited = False
    while not lock.acquire(blocking=False):
        if not waited:
            log.info("pull blob %s: another process is fetching it; waiting", digest)
            waited = True
        record = read_record(partial, digest, total)
        if record is not None:
            on_progress(record.completed)
        await trio.sleep(DOWNLOAD_POLL_SECONDS)
    try:
        if store.has_blob(digest):
            on_progress(total)
            return
        await download_blob(store, client, digest, total, on_progress, limiter)
    finally:
        lock.release()


async def download_blob(
    store: Store,
    client: RegistryClient,
    digest: str,
    total: int,
    on_progress: Callable[[int], None],
    limiter: trio.CapacityLimiter,
) -> None:
    """Fetch one blob into its partial file (resuming), verify it and move it into the store.
    The caller holds the blob's download lock."""
    partial = Path(store.partial_path(digest))
    record = load_or_start_record(partial, digest, total)
    received = record.completed
    on_progress(received)

    def count(n_bytes: int) -> None:
        nonlocal received
        received += n_bytes
        on_progress(received)

    with single_registry_error():
        async with trio.open_nursery() as nursery:
            for part in record.parts:
                if not part.done:
                    nursery.start_soon(
                        download_part, client, digest, total, partial, record, part, count, limiter
                    )
    try:
        await trio.to_thread.run_sync(store.add_blob_file, partial, digest)
    except DigestMismatchError as error:
        discard_partial(partial)
        actual = getattr(error, "actual", None)
        got = f", got {actual}" if actual else ""
        raise RegistryError(
            f"digest mismatch, file must be downloaded again: want {digest}{got}"
        ) from error
    discard_partial(partial)


async def download_part(
    client: RegistryClient,
    digest: str,
    total: int,
    partial: Path,
    record: PartialRecord,
    part: PartState,
    count: Callable[[int], None],
    limiter: trio.CapacityLimiter,
) -> None:
    """Fetch the missing bytes of one part, resuming after transient failures; keep `record`
    on disk up to date (also when cancelled)."""
    policy: RetryPolicy = client.retry
    n_failures = 0
    async with limiter:
        try:
            while not part.done:
                before = part.completed
                try:
                    await _fetch_part_once(client, digest, total, partial, record, part, count)
                except (httpx.TransportError, _ShortRead) as error:
                    if part.completed > before:
                        n_failures = 0
                    n_failures += 1
                    final = isinstance(error, httpx.TransportError) and not (
                        is_transient_transport_error(error)
                    )
                    if n_failures >= policy.attempts or final:
                        raise RegistryError(f"pull blob {digest}: {error}") from error
                    delay = policy.delay(n_failures - 1)
                    log.info("pull blob %s: %s; resuming in %.1fs", digest, error, delay)
                    await trio.sleep(delay)
                except OSError as error:
                    raise RegistryError(f"pull blob {digest}: {error.strerror}") from error
        finally:
            save_record(record_path(partial), record)


class _ShortRead(Exception):
    """The body ended before the requested range did."""


def _write_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of `data` at `offset` (positional: writing the same bytes twice is harmless)."""
    view = memoryview(data)
    while view:
        n_written = os.pwrite(fd, view, offset)
        view = view[n_written:]
        offset += n_written


async def _fetch_part_once(
    client: RegistryClient,
    digest: str,
    total: int,
    partial: Path,
    record: PartialRecord,
    part: PartState,
    count: Callable[[int], None],
) -> None:
    """One ranged GET for the rest of a part. Every byte received reaches the partial file and
    `part.completed`, also when the body fails or the task is cancelled half-way."""
    start = part.offset + part.completed
    end = part.offset + part.size - 1
    async with client.open_blob_range(digest, start, end, total) as response:
        fd = os.open(partial, os.O_WRONLY)
        buffer = bytearray()
        written_since_record = 0
        try:
            async for chunk in response.aiter_bytes():
                room = part.size - part.completed - len(buffer)
                buffer += chunk[:room]
                count(min(len(chunk), room))
                if len(buffer) >= WRITE_BUFFER_SIZE:
                    data = bytes(buffer)
                    await trio.to_thread.run_sync(_write_at, fd, data, part.offset + part.completed)
                    del buffer[: len(data)]
                    part.completed += len(data)
                    written_since_record += len(data)
                    if written_since_record >= RECORD_EVERY:
                        save_record(record_path(partial), record)
                        written_since_record = 0
                if part.completed + len(buffer) >= part.size:
                    break
        finally:
            # Bytes already received are good: keep them, also when cancelled.
            if buffer:
                _write_at(fd, buffer, part.offset + part.completed)
                part.completed += len(buffer)
            os.close(fd)
    if not part.done:
        raise _ShortRead(f"the registry sent {part.completed} of {part.size} bytes of a part")


# ---------------------------------------------------------------- pull


def manifest_blobs(manifest: Manifest) -> list[Layer]:
    """The layers then the config (Ollama's order), each digest once."""
    seen: set[str] = set()
    blobs = []
    for layer in [*manifest.layers, manifest.config]:
        if layer.digest not in seen:
            seen.add(layer.digest)
            blobs.append(layer)
    return blobs


def parse_manifest(raw: bytes) -> Manifest:
    try:
        return Manifest.from_json(raw)
    except Exception as error:
        raise RegistryError(f"pull model manifest: invalid manifest: {error}") from error


async def install_manifest(
    store: Store,
    client: RegistryClient,
    name: ModelName,
    raw_manifest: bytes,
    progress: Progress,
    *,
    parallel_parts: int = N_PARALLEL_PARTS,
) -> None:
    """Fetch every blob `raw_manifest` names that the store lacks, then write the manifest.

    Emits the `pulling <12 hex>`, `verifying sha256 digest` and `writing manifest` events (not
    `pulling manifest` nor `success`, which belong to the caller)."""
    manifest = parse_manifest(raw_manifest)
    old_manifest_bytes = store.read_manifest_bytes(name)
    limiter = trio.CapacityLimiter(parallel_parts)
    pins = store.open_pins()
    try:
        digests = [normalize_digest(layer.digest) for layer in manifest_blobs(manifest)]
        await trio.to_thread.run_sync(pins.add, digests)
        with single_registry_error():
            async with trio.open_nursery() as nursery:
                for layer in manifest_blobs(manifest):
                    nursery.start_soon(ensure_blob, store, client, layer, progress, limiter)
        progress({"status": "verifying sha256 digest"})
        progress({"status": "writing manifest"})
        try:
            await trio.to_thread.run_sync(store.write_manifest_bytes, name, raw_manifest)
        except (MissingBlobError, ValueError) as error:
            raise RegistryError(f"write manifest: {error}") from error
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pins.close)
    # Blobs of a manifest that a racing delete removed while they were pinned go now.
    await trio.to_thread.run_sync(store.remove_unreferenced, digests)
    if old_manifest_bytes is not None and not store.noprune:
        await trio.to_thread.run_sync(remove_replaced_blobs, store, old_manifest_bytes, manifest)


def remove_replaced_blobs(store: Store, old_manifest_bytes: bytes, new: Manifest) -> None:
    """After a model's manifest was replaced, delete the old manifest's blobs that no manifest
    references any more (as Ollama does unless `noprune` is set)."""
    try:
        old = Manifest.from_json(old_manifest_bytes)
    except ValueError:
        return
    dropped = set(old.digests()) - set(new.digests())
    if dropped:
        removed = store.remove_unreferenced(dropped)
        log.info("removed %d blobs the old manifest used", len(removed))


async def pull_model(
    store: Store,
    name: str | ModelName,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
) -> None:
    """Pull `name` (`[host/][namespace/]model[:tag]`) from its registry into `store`.

    See the module docstring for the events and guarantees. `transport` and `retry` replace
    the network and the retry policy (for tests). Raises `RegistryError` on failure and
    `InvalidNameError` for a malformed name.
    """
    progress = progress or _no_progress
    model_name = name if isinstance(name, ModelName) else ModelName.parse(name)
    progress({"status": "pulling manifest"})
    try:
        async with RegistryClient(
            model_name, insecure=insecure, transport=transport, retry=retry
        ) as client:
            raw_manifest = await client.get_manifest(model_name.tag)
            await install_manifest(store, client, model_name, raw_manifest, progress)
    except OSError as error:
        raise public_os_error(error, "pull model") from None
    except BaseExceptionGroup as group:
        matched, rest = group.split(OSError)
        if matched is None or (rest is not None and not is_cancellation(rest)):
            raise
        raise public_os_error(_first(matched), "pull model") from None
    progress({"status": "success"})


def _first(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _describe(error: BaseException) -> str:
    """An error's message without the paths an OSError carries."""
    error = _first(error)
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)
