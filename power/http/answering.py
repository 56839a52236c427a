"""How a translating API style (OpenAI, Anthropic, Responses) answers with a job's outcome.

`answer` takes what `jobs.chat_job` / `jobs.generate_job` returned and the style's translators:
an immediate dict (load/unload) or a non-streamed request becomes one JSON object (`whole` of
the merged native answer); a streamed one becomes server-sent events. The first native chunk is
awaited before the response starts, so that an unknown model, a bad option or a failed load is
a proper 4xx/5xx in the style's error shape rather than a 200 with an error event. Once
streaming, an error becomes the style's error events (`on_error`). A client disconnect cancels
the body's task; `finally` closes the job's iterator, which releases the sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from quart import Response, jsonify

from power.engine.types import EngineError
from power.http.errors import describe
from power.http.jobs import merge_stream
from power.http.streaming import SSE_CONTENT_TYPE

#: native chunk -> the framed SSE events it becomes
Translate = Callable[[dict[str, Any]], Iterable[bytes]]
#: (status, message) -> the framed SSE events that report a failure mid-stream
OnError = Callable[[int, str], Iterable[bytes]]


async def answer(
    outcome: Any,
    *,
    stream: bool,
    kind: str,
    whole: Callable[[dict[str, Any]], dict[str, Any]],
    translate: Translate,
    on_error: OnError,
    trailer: bytes = b"",
) -> Response:
    """The HTTP answer for a job's `outcome` (see the module docstring); `trailer` ends a
    stream (OpenAI's `data: [DONE]`)."""
    if isinstance(outcome, dict):  # loaded/unloaded: an empty answer
        return jsonify(whole(outcome))
    if not stream:
        async with contextlib.aclosing(outcome) as source:
            chunks = [c async for c in source]
        return jsonify(whole(merge_stream(chunks, kind)))
    try:
        first = await outcome.__anext__()
    except StopAsyncIteration:
        raise EngineError("no output") from None
    except BaseException:
        await outcome.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            for event in translate(first):
                yield event
            async for native in outcome:
                for event in translate(native):
                    yield event
        except Exception as exc:  # noqa: BLE001 - told to the client as the style's error event
            for event in on_error(*describe(exc)):
                yield event
        finally:
            await outcome.aclose()
        if trailer:
            yield trailer

    response = Response(body(), mimetype=SSE_CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response
