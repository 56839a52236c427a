"""Model management routes: tags, show, copy, delete, ps, create, pull, push, blobs.

Store operations are blocking file work: they run in worker threads. create/pull/push stream
Ollama's status lines (NDJSON) as they happen; the producer never waits for a slow reader (a
memory channel with a generous buffer; progress events are dropped when it is full, the final
status never is).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from power.http.model_json import entry_json, show_json
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
from power.http.streaming import ndjson_line
from power.registry import models as store_models
from power.registry.create import CreateRequest
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


async def _progress_stream(
    work: Callable[[Callable[[dict], None]], Awaitable[None]], *, stream: bool
) -> Response:
    """Run `work(progress)` and stream its progress dicts, ending with its own final line."""
    if not stream:
        events: list[dict] = []
        try:
            await work(events.append)
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RequestError(_status_of(exc), str(exc)) from None
        last = events[-1] if events else {"status": "success"}
        return jsonify(last)

    send, receive = trio.open_memory_channel[dict](1024)

    def progress(event: dict) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            send.send_nowait(event)

    async def body() -> AsyncIterator[bytes]:
        # the work runs as this body's own task, so a client disconnect cancels it
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def run() -> None:
                try:
                    await work(progress)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                finally:
                    await send.aclose()

            nursery.start_soon(run)
            async with receive:
                async for event in receive:
                    yield ndjson_line(event)
            if errors:
                yield ndjson_line({"error": str(errors[0])})

    response = Response(body(), mimetype="application/x-ndjson")
    response.timeout = None
    return response


def _status_of(exc: BaseException) -> int:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 600:
        return status
    if isinstance(exc, ModelNotFoundError):
        return 404
    if isinstance(exc, InvalidNameError | ValueError):
        return 400
    return 500


def _is_local_path(text: str) -> bool:
    return bool(text) and (os.path.isabs(text) or text.startswith(("./", "../", "~", ".\\")))


def _from_loopback() -> bool:
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


@blueprint.route("/api/create", methods=["POST"])
async def create() -> Response:
    state = get_state()
    req = parse_request(CreateRequest, await request.get_data())
    _name(req.model)
    if _is_local_path(req.from_) and not _from_loopback():
        # `from` naming a folder or file of this machine is power's extension for the local CLI
        raise RequestError(403, "creating from a local path is only allowed from this machine")

    async def work(progress: Callable[[dict], None]) -> None:
        def report(event: dict) -> None:
            trio.from_thread.run_sync(progress, event)

        await trio.to_thread.run_sync(store_models.create, state.store, req, report)

    return await _progress_stream(work, stream=req.stream)


@blueprint.route("/api/pull", methods=["POST"])
async def pull() -> Response:
    state = get_state()
    req = parse_request(PullRequest, await request.get_data())
    name = _name(req.model)

    async def work(progress: Callable[[dict], None]) -> None:
        await pull_model(state.store, str(name), insecure=req.insecure, progress=progress)

    return await _progress_stream(work, stream=req.stream)


@blueprint.route("/api/push", methods=["POST"])
async def push() -> Response:
    state = get_state()
    req = parse_request(PushRequest, await request.get_data())
    name = _name(req.model)

    async def work(progress: Callable[[dict], None]) -> None:
        await push_model(state.store, str(name), insecure=req.insecure, progress=progress)

    return await _progress_stream(work, stream=req.stream)


# ---------------------------------------------------------------- blobs


def _digest(text: str) -> str:
    try:
        return "sha256:" + parse_digest(text.replace("sha256-", "sha256:", 1))
    except (InvalidDigestError, ValueError):
        raise RequestError(400, f"invalid digest {text!r}") from None


@blueprint.route("/api/blobs/<digest>", methods=["HEAD"])
async def blob_head(digest: str) -> Response:
    state = get_state()
    if state.store.has_blob(_digest(digest)):
        return Response("", status=200)
    return Response("", status=404)


@blueprint.route("/api/blobs/<digest>", methods=["GET"])
async def blob_get(digest: str) -> Response:
    state = get_state()
    path = state.store.blob_path(_digest(digest))
    if not path.is_file():
        raise RequestError(404, "blob not found")

    async def body() -> AsyncIterator[bytes]:
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(1 << 20):
                yield chunk

    response = Response(body(), mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(path.stat().st_size)
    response.timeout = None
    return response


@blueprint.route("/api/blobs/<digest>", methods=["DELETE"])
async def blob_delete(digest: str) -> Response:
    state = get_state()
    d = _digest(digest)
    path = state.store.blob_path(d)
    if not path.is_file():
        raise RequestError(404, "blob not found")
    in_use = await trio.to_thread.run_sync(state.store.referenced_digests)
    if d in in_use:
        raise RequestError(409, "blob is referenced by a model")
    path.unlink()
    return Response("", status=200)


@blueprint.route("/api/blobs/<digest>", methods=["POST"])
async def blob_post(digest: str) -> Response:
    """Stream the upload to a temp file in the store, verify its sha256, move it into place."""
    state = get_state()
    d = _digest(digest)
    if state.store.has_blob(d):
        # consume the body so the connection stays usable
        async for _ in request.body:
            pass
        return Response("", status=200)
    tmp_dir = state.store.temp_dir()
    fd, tmp_name = await trio.to_thread.run_sync(
        lambda: tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    )
    hasher = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.body:
                hasher.update(chunk)
                await trio.to_thread.run_sync(out.write, chunk)
        actual = "sha256:" + hasher.hexdigest()
        if actual != d:
            raise RequestError(400, f"digest mismatch, expected {d}, got {actual}")
        try:
            await trio.to_thread.run_sync(lambda: state.store.add_blob_file(tmp_name, d, move=True))
        except DigestMismatchError as exc:
            raise RequestError(400, str(exc)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return Response("", status=201)
