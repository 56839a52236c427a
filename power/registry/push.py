"""Push a model from the store to an OCI registry, as `ollama push` does.

The contract of `push_model`:

- Status events: `{"status": "retrieving manifest"}`; per blob (layers, then the config)
  `{"status": "pushing <12 hex>", "digest", "total", "completed"}` repeatedly;
  `{"status": "pushing manifest"}`; `{"status": "success"}`.
- A blob the repository already has (`HEAD …/blobs/<digest>` answers 200) is skipped and reported
  complete at once. Otherwise: `POST …/blobs/uploads/` (202 + Location), `PATCH` the bytes in
  chunks of `UPLOAD_CHUNK_SIZE` with `Content-Range: start-end` (202 + a new Location each time),
  then `PUT <Location>` with `digest=` merged into the query the Location already carries.
- A failed upload (connection error, 5xx, 429) is restarted from its first byte under the retry
  policy, since a half-sent chunk leaves the registry's upload state unknown.
- The manifest is sent with exactly the bytes of the local manifest file and the schema-2 content
  type, after every blob it names is in the registry.
- A name with no local manifest raises `RegistryError("model '<name>' not found", 404)`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import trio

from power.registry.names import ModelName
from power.registry.oci import RegistryClient, RegistryError, RetryPolicy, is_transient_status
from power.registry.pull import BlobProgress, manifest_blobs, parse_manifest
from power.registry.store import Layer, Store, public_os_error

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]

MiB = 1024 * 1024
#: Bytes sent per PATCH request.
UPLOAD_CHUNK_SIZE = 64 * MiB
#: Bytes read from the blob file at a time while a chunk is sent.
READ_SIZE = 1 * MiB


def _no_progress(_event: dict) -> None:
    pass


async def read_file_range(
    path: Path, start: int, size: int, on_sent: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The bytes `start..start+size` of a file, read in `READ_SIZE` pieces off the event loop;
    `on_sent(n)` is called as each piece is handed to the transport."""
    with path.open("rb") as file:
        file.seek(start)
        remaining = size
        while remaining > 0:
            data = await trio.to_thread.run_sync(file.read, min(READ_SIZE, remaining))
            if not data:
                raise RegistryError(f"upload blob: {path.name} is shorter than its manifest says")
            remaining -= len(data)
            yield data
            on_sent(len(data))


async def upload_blob(
    client: RegistryClient,
    path: Path,
    layer: Layer,
    progress: Progress,
    *,
    chunk_size: int = UPLOAD_CHUNK_SIZE,
) -> None:
    """Make the repository hold one blob: skip it when present, else upload it in chunks."""
    digest = layer.digest
    size = path.stat().st_size
    reporter = BlobProgress(progress, "pushing", digest, size)
    reporter.update(0)
    if await client.blob_size(digest) is not None:
        reporter.update(size)
        return

    policy: RetryPolicy = client.retry
    for i_attempt in range(policy.attempts):
        sent = 0

        def count(n_bytes: int) -> None:
            nonlocal sent
            sent += n_bytes
            reporter.update(sent)

        try:
            location = await client.start_upload()
            for start in range(0, size, chunk_size):
                n_bytes = min(chunk_size, size - start)
                location = await client.upload_chunk(
                    location,
                    start,
                    n_bytes,
                    lambda start=start, n_bytes=n_bytes: read_file_range(
                        path, start, n_bytes, count
                    ),
                    digest=digest,
                )
            await client.finish_upload(location, digest)
        except RegistryError as error:
            transient = error.status is None or is_transient_status(error.status)
            if not transient or i_attempt + 1 >= policy.attempts:
                raise
            delay = policy.delay(i_attempt)
            log.info("upload blob %s: %s; restarting in %.1fs", digest, error, delay)
            await trio.sleep(delay)
            continue
        reporter.update(size)
        return


async def push_model(
    store: Store,
    name: str | ModelName,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
    chunk_size: int = UPLOAD_CHUNK_SIZE,
) -> None:
    """Push the local model `name` to its registry (see the module docstring).

    `transport`, `retry` and `chunk_size` are for tests. Raises `RegistryError` on failure and
    `InvalidNameError` for a malformed name.
    """
    progress = progress or _no_progress
    model_name = name if isinstance(name, ModelName) else ModelName.parse(name)
    progress({"status": "retrieving manifest"})
    raw_manifest = store.read_manifest_bytes(model_name)
    if raw_manifest is None:
        raise RegistryError(f"model '{model_name.display}' not found", 404)
    manifest = parse_manifest(raw_manifest)
    for layer in manifest_blobs(manifest):
        if not store.has_blob(layer.digest):
            raise RegistryError(
                f"push model: blob {layer.digest} of '{model_name.display}' is missing "
                "from the store",
                404,
            )

    try:
        async with RegistryClient(
            model_name, insecure=insecure, transport=transport, retry=retry
        ) as client:
            for layer in manifest_blobs(manifest):
                path = Path(store.blob_path(layer.digest))
                await upload_blob(client, path, layer, progress, chunk_size=chunk_size)
            progress({"status": "pushing manifest"})
            await client.put_manifest(model_name.tag, raw_manifest)
    except OSError as error:  # a blob deleted meanwhile: say so without its path
        raise public_os_error(error, "push model") from None
    progress({"status": "success"})
