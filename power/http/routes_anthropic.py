"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

What Claude Code, Claude Desktop and the `anthropic` SDKs speak when `ANTHROPIC_BASE_URL`
points at power. Requests are translated to native chat requests (`anthropic_compat`), run by
the same chat job as /api/chat, and the native chunks translated back: one `message` object, or
Anthropic's named SSE events when `stream` is true. Errors use Anthropic's shape and statuses.
`count_tokens` renders the prompt exactly as a generation would and counts it with the model's
own tokenizer (Ollama estimates a quarter of the characters). The API key (`x-api-key` or
`Authorization: Bearer`) is checked in `app`, for every route alike.
"""

from __future__ import annotations

import time

from quart import Blueprint, Response, jsonify, request

from power.engine.types import EngineError
from power.http import anthropic_compat as ac
from power.http.answering import answer
from power.http.anthropic_schemas import CountTokensRequest, MessagesRequest
from power.http.errors import describe
from power.http.jobs import chat_job, count_chat_tokens
from power.http.schemas import RequestError, parse_request
from power.http.state import get_state
from power.http.streaming import sse_event

blueprint = Blueprint("anthropic", __name__)


def anthropic_error_response(status: int, message: str) -> Response:
    response = jsonify(ac.anthropic_error(status, message))
    response.status_code = status
    return response


@blueprint.errorhandler(RequestError)
async def _request_error(exc: RequestError) -> Response:
    return anthropic_error_response(exc.status, exc.message)


@blueprint.errorhandler(EngineError)
async def _engine_error(exc: EngineError) -> Response:
    return anthropic_error_response(*describe(exc))


@blueprint.route("/v1/messages", methods=["POST"])
async def messages() -> Response:
    t_start = time.perf_counter_ns()
    req = parse_request(MessagesRequest, await request.get_data())
    native = ac.chat_request_from_anthropic(req)
    outcome = await chat_job(get_state(), native, t_start=t_start)
    stream = ac.MessageStream(native.model)
    return await answer(
        outcome,
        stream=req.stream,
        kind="chat",
        whole=lambda final: ac.anthropic_message(final, message_id=stream.id),
        translate=lambda chunk: _framed(stream.translate(chunk)),
        on_error=lambda status, message: _framed([ac.error_event(status, message)]),
    )


def _framed(events: list[ac.Event]) -> list[bytes]:
    return [sse_event(data, name) for name, data in events]


@blueprint.route("/v1/messages/count_tokens", methods=["POST"])
async def count_tokens() -> Response:
    req = parse_request(CountTokensRequest, await request.get_data())
    n_tokens = await count_chat_tokens(get_state(), ac.count_request_from_anthropic(req))
    return jsonify({"input_tokens": n_tokens})
