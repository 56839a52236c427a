"""OpenAI's Responses API: `POST /v1/responses` (what Codex and newer OpenAI SDK code speak).

Stateless, as in Ollama: every request carries its whole conversation in `input`;
`previous_response_id` and `conversation` answer a 400 that says so, and nothing is stored.
The request is translated to a native chat request (`responses_compat`), run by the same chat
job as /api/chat, and the native chunks translated back: one `response` object, or the
Responses SSE events when `stream` is true. Errors use OpenAI's shape.
"""

from __future__ import annotations

import time

from quart import Blueprint, Response, jsonify, request

from power.engine.types import EngineError
from power.http import responses_compat as rc
from power.http.answering import answer
from power.http.errors import describe
from power.http.jobs import chat_job
from power.http.openai_compat import openai_error
from power.http.responses_schemas import ResponsesRequest
from power.http.schemas import RequestError, parse_request
from power.http.state import get_state
from power.http.streaming import sse_event

blueprint = Blueprint("responses", __name__)


def _error_response(status: int, message: str) -> Response:
    if status == 404 and message.startswith("model '"):
        body = openai_error(404, message, param="model", code="model_not_found")
    else:
        body = openai_error(status, message)
    response = jsonify(body)
    response.status_code = status
    return response


@blueprint.errorhandler(RequestError)
async def _request_error(exc: RequestError) -> Response:
    return _error_response(exc.status, exc.message)


@blueprint.errorhandler(EngineError)
async def _engine_error(exc: EngineError) -> Response:
    return _error_response(*describe(exc))


@blueprint.route("/v1/responses", methods=["POST"])
async def responses() -> Response:
    t_start = time.perf_counter_ns()
    req = parse_request(ResponsesRequest, await request.get_data())
    native = rc.chat_request_from_responses(req)
    outcome = await chat_job(get_state(), native, t_start=t_start)
    echo = rc.request_echo(req)
    stream = rc.ResponseStream(native.model, echo=echo)
    return await answer(
        outcome,
        stream=req.stream,
        kind="chat",
        whole=lambda final: rc.responses_answer(final, response_id=stream.id, echo=echo),
        translate=lambda chunk: _framed(stream.translate(chunk)),
        on_error=lambda status, message: _framed(stream.failed(status, message)),
    )


def _framed(events: list[rc.Event]) -> list[bytes]:
    return [sse_event(data, name) for name, data in events]
