"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Requests are translated to native ones (`openai_compat`), run through the same jobs as
/api/chat and /api/generate, and the native chunks translated back (SSE when streaming, ending
with `data: [DONE]`). Errors use OpenAI's shape. Unlike Ollama, `options` (any Ollama option,
`num_ctx` included) is accepted as an extension field.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from power.engine.types import EngineError
from power.http import openai_compat as oa
from power.http.answering import answer
from power.http.errors import public_message
from power.http.jobs import chat_job, embed_texts, generate_job
from power.http.openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from power.http.running import effective_options, resolve_model
from power.http.schemas import RequestError, parse_request
from power.http.state import get_state
from power.http.streaming import SSE_DONE, sse_event
from power.options import OptionError
from power.registry import models as store_models

blueprint = Blueprint("openai", __name__)


def openai_error_response(status: int, message: str) -> Response:
    message = public_message(message)
    if status == 404 and message.startswith("model '"):
        body = oa.openai_error(404, message, param="model", code="model_not_found")
    else:
        body = oa.openai_error(status, message)
    response = jsonify(body)
    response.status_code = status
    return response


@blueprint.errorhandler(RequestError)
async def _request_error(exc: RequestError) -> Response:
    return openai_error_response(exc.status, exc.message)


@blueprint.errorhandler(EngineError)
async def _engine_error(exc: EngineError) -> Response:
    return openai_error_response(exc.status, str(exc))


@blueprint.errorhandler(OptionError)
async def _option_error(exc: OptionError) -> Response:
    return openai_error_response(400, str(exc))


async def _completion(request_class: type, to_native: Any, job: Any, kind: str) -> Response:
    t_start = time.perf_counter_ns()
    req = parse_request(request_class, await request.get_data())
    native = to_native(req)
    outcome = await job(get_state(), native, t_start=t_start)
    if kind == "chat":
        translator = oa.ChatCompletionStream(native.model, include_usage=req.include_usage)
        whole = oa.chat_completion
    else:
        translator = oa.CompletionStream(native.model, include_usage=req.include_usage)
        whole = oa.text_completion
    return await answer(
        outcome,
        stream=req.stream,
        kind=kind,
        whole=lambda final: whole(final, completion_id=translator.id),
        translate=lambda native: [sse_event(item) for item in translator.translate(native)],
        on_error=lambda status, message: [sse_event(oa.openai_error(status, message))],
        trailer=SSE_DONE,
    )


@blueprint.route("/v1/chat/completions", methods=["POST"])
async def chat_completions() -> Response:
    return await _completion(ChatCompletionRequest, oa.chat_request_from_openai, chat_job, "chat")


@blueprint.route("/v1/completions", methods=["POST"])
async def completions() -> Response:
    return await _completion(
        CompletionRequest, oa.generate_request_from_openai, generate_job, "generate"
    )


@blueprint.route("/v1/embeddings", methods=["POST"])
async def embeddings() -> Response:
    state = get_state()
    req = parse_request(EmbeddingRequest, await request.get_data())
    native = oa.embed_request_from_openai(req)
    ref = await resolve_model(state, native.model)
    ref.require_embedding()
    if not native.input:
        raise RequestError(400, "invalid input: input must not be empty")
    options = effective_options(state, ref, native.options)
    result, _ = await embed_texts(
        state,
        ref,
        native.input,
        options=options,
        keep_alive=native.keep_alive,
        truncate=native.truncate,
        dimensions=native.dimensions,
    )
    state.metrics.record_generation(ref.name, result.prompt_eval_count, 0)
    return jsonify(
        oa.embedding_list(
            ref.name, result.embeddings, result.prompt_eval_count, req.encoding_format
        )
    )


async def _stored_models() -> list[tuple[str, Any]]:
    state = get_state()
    entries = await trio.to_thread.run_sync(store_models.list_models, state.store)
    return [(e.name.display, e.modified_at) for e in entries]


@blueprint.route("/v1/models", methods=["GET"])
async def list_models() -> Response:
    return jsonify(oa.model_list(await _stored_models()))


@blueprint.route("/v1/models/<path:model_id>", methods=["GET"])
async def get_model(model_id: str) -> Response:
    state = get_state()
    ref = await resolve_model(state, model_id)
    return jsonify(oa.model_object(ref.name, ref.resolved.modified_at))
