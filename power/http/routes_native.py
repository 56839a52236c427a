"""Ollama's inference routes: /api/generate, /api/chat, /api/embed, /api/embeddings.

Streaming answers are NDJSON; the first chunk is computed before the response starts, so that
an unknown model, a bad option or a failed load is a proper 4xx/5xx rather than a 200 with an
error line. Once streaming, an error is one last `{"error": ...}` line. A client disconnect
cancels the body's task: the engine generator's `finally` releases the sequence.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, jsonify, request

from power.engine.types import EngineError
from power.http.errors import describe
from power.http.jobs import chat_job, embed_texts, generate_job, merge_stream
from power.http.running import effective_options, resolve_model, use_model
from power.http.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    RequestError,
    parse_request,
)
from power.http.state import get_state
from power.http.streaming import ndjson_line
from power.options import OptionError

blueprint = Blueprint("native", __name__)


def _debug_render_only(body: bytes) -> bool:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("_debug_render_only"))


def _native(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk as Ollama writes it: without the keys other API styles read (`stop_sequence`)."""
    chunk.pop("stop_sequence", None)
    return chunk


async def respond(chunks: AsyncIterator[dict[str, Any]], *, stream: bool, kind: str) -> Response:
    """NDJSON stream, or one merged object when `stream` is false."""
    if not stream:
        async with contextlib.aclosing(chunks) as source:
            collected = [c async for c in source]
        return jsonify(_native(merge_stream(collected, kind)))
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        raise EngineError("no output") from None
    except BaseException:
        await chunks.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield ndjson_line(_native(first))
            async for chunk in chunks:
                yield ndjson_line(_native(chunk))
        except (RequestError, EngineError, OptionError) as exc:
            yield ndjson_line({"error": describe(exc)[1]})
        finally:
            await chunks.aclose()

    response = Response(body(), mimetype="application/x-ndjson")
    response.timeout = None
    return response


async def _run_job(request_class: type, job: Any, kind: str) -> Response:
    t_start = time.perf_counter_ns()
    body = await request.get_data()
    req = parse_request(request_class, body)
    outcome = await job(get_state(), req, t_start=t_start, debug=_debug_render_only(body))
    if isinstance(outcome, dict):
        return jsonify(outcome)
    return await respond(outcome, stream=req.stream, kind=kind)


@blueprint.route("/api/generate", methods=["POST"])
async def generate() -> Response:
    return await _run_job(GenerateRequest, generate_job, "generate")


@blueprint.route("/api/chat", methods=["POST"])
async def chat() -> Response:
    return await _run_job(ChatRequest, chat_job, "chat")


@blueprint.route("/api/embed", methods=["POST"])
async def embed() -> Response:
    t_start = time.perf_counter_ns()
    state = get_state()
    req = parse_request(EmbedRequest, await request.get_data())
    ref = await resolve_model(state, req.model)
    ref.require_embedding()
    options = effective_options(state, ref, req.options)
    if not req.input:
        async with use_model(state, ref, options, req.keep_alive) as model:
            load_ns = model.load_ns_since(t_start)
        return jsonify(
            {
                "model": ref.name,
                "embeddings": [],
                "total_duration": time.perf_counter_ns() - t_start,
                "load_duration": load_ns,
                "prompt_eval_count": 0,
            }
        )
    result, model = await embed_texts(
        state,
        ref,
        req.input,
        options=options,
        keep_alive=req.keep_alive,
        truncate=req.truncate,
        dimensions=req.dimensions,
    )
    state.metrics.record_generation(ref.name, result.prompt_eval_count, 0)
    return jsonify(
        {
            "model": ref.name,
            "embeddings": result.embeddings,
            "total_duration": time.perf_counter_ns() - t_start,
            "load_duration": model.load_ns_since(t_start),
            "prompt_eval_count": result.prompt_eval_count,
        }
    )


@blueprint.route("/api/embeddings", methods=["POST"])
async def embeddings_legacy() -> Response:
    state = get_state()
    req = parse_request(EmbeddingsRequest, await request.get_data())
    ref = await resolve_model(state, req.model)
    ref.require_embedding()
    options = effective_options(state, ref, req.options)
    if not req.prompt:
        async with use_model(state, ref, options, req.keep_alive):
            pass
        return jsonify({"embedding": []})
    result, _ = await embed_texts(
        state,
        ref,
        [req.prompt],
        options=options,
        keep_alive=req.keep_alive,
        truncate=True,
        dimensions=None,
    )
    return jsonify({"embedding": result.embeddings[0]})
