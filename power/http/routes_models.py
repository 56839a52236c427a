"""Model management routes: tags, show, copy, delete, ps, create, pull, push, blobs.

Store operations are blocking file work: they run in worker threads. create/pull/push stream
Ollama's status lines (NDJSON) as they happen (`power.http.progress`: a slow reader gets merged
progress, and always the final status or the error).

Blob uploads stream to a temporary file of the store, hashed and written in a worker thread
one chunk at a time (at most `bodies.STREAM_BUFFER` of it waits in memory), within
`POWER_MAX_BLOB_BYTES` and the disk's free space.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from power.http.model_json import entry_json, show_json
from power.http.progress import progress_response
from power.http.schemas import (
    CopyRequest,
    DeleteRequest,
    PullRequest,
    PushRequest,
    RequestError,
    ShowRequest,
    parse_request,
)
from power.http.state import get_state
from power.registry import models as store_models
from power.registry.create import CreateRequest
from power.registry.local_paths import local_source_path
from power.registry.names import InvalidNameError, ModelName
from power.registry.pull import pull_model
from power.registry.push import push_model
from power.registry.store import (
    DigestMismatchError,
    InvalidDigestError,
    ModelNotFoundError,
    parse_digest,
)

blueprint = Blueprint("models", __name__)


def _name(text: str) -> ModelName:
    if not text:
        raise RequestError(400, "model is required")
    try:
        return ModelName.parse(text)
    except InvalidNameError as exc:
        raise RequestError(400, str(exc)) from None


async def _blocking(fn: Callable[..., Any], *args: Any, subject: ModelName | None = None) -> Any:
    """Run a store operation in a worker thread; a missing model is a 404 naming `subject`."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except ModelNotFoundError as exc:
        message = f"model '{subject.display}' not found" if subject is not None else str(exc)
        raise RequestError(404, message) from None
    except InvalidNameError as exc:
        raise RequestError(400, str(exc)) from None


@blueprint.route("/api/tags", methods=["GET", "HEAD"])
async def tags() -> Response:
    state = get_state()
    entries = await _blocking(store_models.list_models, state.store)
    return jsonify({"models": [entry_json(entry) for entry in entries]})


@blueprint.route("/api/show", methods=["POST"])
async def show() -> Response:
    state = get_state()
    req = parse_request(ShowRequest, await request.get_data())
    name = _name(req.model)
    shown = await _blocking(store_models.show, state.store, name, req.verbose, subject=name)
    return jsonify(show_json(shown))


@blueprint.route("/api/copy", methods=["POST"])
async def copy() -> Response:
    state = get_state()
    req = parse_request(CopyRequest, await request.get_data())
    source, destination = _name(req.source), _name(req.destination)
    await _blocking(store_models.copy, state.store, source, destination, subject=source)
    return Response("", status=200)


@blueprint.route("/api/delete", methods=["DELETE", "POST"])
async def delete() -> Response:
    state = get_state()
    req = parse_request(DeleteRequest, await request.get_data())
    name = _name(req.model)
    await _blocking(store_models.delete, state.store, name, subject=name)
    await state.manager.unload(name.display)
    return Response("", status=200)


@blueprint.route("/api/ps", methods=["GET"])
async def ps() -> Response:
    state = get_state()
    models = []
    for instance in state.manager.running():
        info = instance.info
        if instance.refs > 0 or instance.expires_at is None:
            expires = (
                datetime(9999, 12, 31, tzinfo=UTC)
                if not math.isfinite(instance.keep_alive)
                else datetime.now(UTC)
            )
            if instance.refs > 0 and math.isfinite(instance.keep_alive):
                expires = _moment(datetime.now(UTC).timestamp() + instance.keep_alive)
        else:
            expires = _moment(instance.expires_at)
        loaded = instance.loaded
        gpu_layers = 0
        size = instance.estimated_bytes
        if loaded is not None:
            size = loaded.model.size_bytes + loaded.kv_bytes()
            gpu_layers = loaded.gpu_layers()
        n_layer = loaded.model.n_layer if loaded else 1
        models.append(
            {
                "name": instance.name,
                "model": instance.name,
                "size": size,
                "digest": info.get("digest", ""),
                "details": info.get("details", {}),
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "size_vram": int(size * min(1.0, gpu_layers / max(1, n_layer + 1))),
                "context_length": instance.spec.num_ctx,
                "devices": [d.to_json() for d in loaded.placement()] if loaded else [],
            }
        )
    return jsonify({"models": models})


def _moment(timestamp: float) -> datetime:
    """A UTC datetime, clamped to the far future for keep_alive values beyond the calendar."""
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError):
        return datetime(9999, 12, 31, tzinfo=UTC)


# ---------------------------------------------------------------- streamed operations


@blueprint.route("/api/create", methods=["POST"])
async def create() -> Response:
    state = get_state()
    req = parse_request(CreateRequest, await request.get_data())
    _name(req.model)
    # `from` naming a file or folder of this machine is power's extension for the local CLI:
    # absolute paths, loopback clients only (LocalPathError: 400 or 403)
    local_source_path(req.from_, client=request.remote_addr or "")
    local_source_path(req.draft, client=request.remote_addr or "")

    async def work(progress: Callable[[dict], None]) -> None:
        def report(event: dict) -> None:
            trio.from_thread.run_sync(progress, event)

        await trio.to_thread.run_sync(store_models.create, state.store, req, report)

    return await progress_response(work, stream=req.stream, context=f"create {req.model}")


@blueprint.route("/api/pull", methods=["POST"])
async def pull() -> Response:
    state = get_state()
    req = parse_request(PullRequest, await request.get_data())
    name = _name(req.model)

    async def work(progress: Callable[[dict], None]) -> None:
        await pull_model(state.store, str(name), insecure=req.insecure, progress=progress)

    return await progress_response(work, stream=req.stream, context=f"pull {name}")


@blueprint.route("/api/push", methods=["POST"])
async def push() -> Response:
    state = get_state()
    req = parse_request(PushRequest, await request.get_data())
    name = _name(req.model)

    async def work(progress: Callable[[dict], None]) -> None:
        await push_model(state.store, str(name), insecure=req.insecure, progress=progress)

    return await progress_response(work, stream=req.stream, context=f"push {name}")


# ---------------------------------------------------------------- blobs


def _digest(text: str) -> str:
    try:
        return "sha256:" + parse_digest(text.replace("sha256-", "sha256:", 1))
    except (InvalidDigestError, ValueError):
        raise RequestError(400, f"invalid digest {text!r}") from None


@blueprint.route("/api/blobs/<digest>", methods=["HEAD"])
async def blob_head(digest: str) -> Response:
    state = get_state()
    exists = await trio.to_thread.run_sync(state.store.has_blob, _digest(digest))
    return Response("", status=200 if exists else 404)


@blueprint.route("/api/blobs/<digest>", methods=["GET"])
async def blob_get(digest: str) -> Response:
    state = get_state()
    path = state.store.blob_path(_digest(digest))

    def open_blob() -> tuple[Any, int]:
        file = open(path, "rb")  # noqa: SIM115 - closed by the body
        return file, os.fstat(file.fileno()).st_size

    try:
        file, size = await trio.to_thread.run_sync(open_blob)
    except (FileNotFoundError, IsADirectoryError):
        raise RequestError(404, "blob not found") from None

    async def body() -> AsyncIterator[bytes]:
        async with trio.wrap_file(file) as f:
            while chunk := await f.read(1 << 20):
                yield chunk

    response = Response(body(), mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(size)
    response.timeout = None
    return response


@blueprint.route("/api/blobs/<digest>", methods=["DELETE"])
async def blob_delete(digest: str) -> Response:
    state = get_state()
    d = _digest(digest)

    def delete() -> None:
        path = state.store.blob_path(d)
        if not path.is_file():
            raise RequestError(404, "blob not found")
        if d in state.store.referenced_digests():
            raise RequestError(409, "blob is referenced by a model")
        path.unlink(missing_ok=True)

    await trio.to_thread.run_sync(delete)
    return Response("", status=200)


class _Upload:
    """A blob upload being written: a temporary file of the store, its sha256 and its size,
    all updated in a worker thread one chunk at a time."""

    def __init__(self, directory: str, limit: int | None) -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="upload-")
        self.file = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.n_bytes = 0
        self.limit = limit

    def write(self, chunk: bytes) -> None:
        self.n_bytes += len(chunk)
        if self.limit is not None and self.n_bytes > self.limit:
            raise RequestError(413, f"blob larger than POWER_MAX_BLOB_BYTES ({self.limit} bytes)")
        self.hasher.update(chunk)
        self.file.write(chunk)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _upload_limit(tmp_dir: str, max_blob_bytes: int | None) -> int | None:
    """The most bytes an upload may have: POWER_MAX_BLOB_BYTES and the disk's free space."""
    free = shutil.disk_usage(tmp_dir).free
    return free if max_blob_bytes is None else min(free, max_blob_bytes)


@blueprint.route("/api/blobs/<digest>", methods=["POST"])
async def blob_post(digest: str) -> Response:
    """Stream the upload to a temp file in the store, verify its sha256, move it into place.
    An existing blob is answered at once (the body is not read: the connection closes)."""
    state = get_state()
    d = _digest(digest)
    if await trio.to_thread.run_sync(state.store.has_blob, d):
        return Response("", status=200)
    tmp_dir = str(await trio.to_thread.run_sync(state.store.temp_dir))
    limit = await trio.to_thread.run_sync(_upload_limit, tmp_dir, state.settings.max_blob_bytes)
    declared = request.content_length
    if declared is not None and limit is not None and declared > limit:
        raise RequestError(413, f"blob of {declared} bytes is larger than the server accepts")
    upload = await trio.to_thread.run_sync(_Upload, tmp_dir, limit)
    try:
        async for chunk in request.body:
            await trio.to_thread.run_sync(upload.write, chunk)
        await trio.to_thread.run_sync(upload.file.close)
        actual = "sha256:" + upload.hasher.hexdigest()
        if actual != d:
            raise RequestError(400, f"digest mismatch, expected {d}, got {actual}")
        try:
            await trio.to_thread.run_sync(
                lambda: state.store.add_blob_file(upload.path, d, move=True)
            )
        except DigestMismatchError as exc:
            raise RequestError(400, str(exc)) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RequestError(507, "not enough disk space on the server for this blob") from None
        raise
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(upload.discard)
    return Response("", status=201)
