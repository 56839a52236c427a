"""One log line per HTTP request, as Ollama's GIN log writes one, with what power knows more.

    [power] 2026/12/02 - 11:04:05 | 200 |    1.234567s | 127.0.0.1 | POST "/api/chat" | model=qwen2.5-coder:0.5b prompt_tokens=31 eval_tokens=12

Status, duration, client address, method and path always; `model` when the request named one
that was resolved, and the token counts when a generation or an embedding finished. The line
is written when the response is over: for a stream, after its last byte, so the duration is
the whole stream's. A stream the client left is logged with the status already sent and
`(client gone)`; a request that ended without any answer (cancelled before it) as 499.

Never blocking: `RequestLogMiddleware` wraps the ASGI app and times each `http` request; route
code adds details with `note()` (through a context variable: trio child tasks inherit the
request's record). The line goes to the `power.requests` logger, whose only handler puts it on
an unbounded queue; a thread of `start_request_log` writes the queue to stderr, so a slow or
full stderr never stalls the event loop. `POWER_REQUEST_LOG=0` turns the whole thing off.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import attrs
import trio

log = logging.getLogger("power.requests")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Any]


@attrs.define
class RequestRecord:
    """What the route found out about the request it served."""

    model: str = ""
    prompt_tokens: int | None = None
    eval_tokens: int | None = None


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "power_request_record", default=None
)


def note(
    *, model: str | None = None, prompt_tokens: int | None = None, eval_tokens: int | None = None
) -> None:
    """Add details to the current request's log line (nothing outside a logged request)."""
    record = _current.get()
    if record is None:
        return
    if model:
        record.model = model
    if prompt_tokens is not None:
        record.prompt_tokens = (record.prompt_tokens or 0) + prompt_tokens
    if eval_tokens is not None:
        record.eval_tokens = (record.eval_tokens or 0) + eval_tokens


def format_line(
    *,
    status: int,
    seconds: float,
    client: str,
    method: str,
    path: str,
    record: RequestRecord,
    gone: bool = False,
    now: datetime | None = None,
) -> str:
    """The log line (see the module docstring)."""
    moment = (now or datetime.now()).strftime("%Y/%m/%d - %H:%M:%S")
    shown_path = path.replace('"', "%22")
    line = f'[power] {moment} | {status:3d} | {_duration(seconds):>13} | {client} | {method} "{shown_path}"'
    details = []
    if record.model:
        details.append(f"model={record.model}")
    if record.prompt_tokens is not None:
        details.append(f"prompt_tokens={record.prompt_tokens}")
    if record.eval_tokens is not None:
        details.append(f"eval_tokens={record.eval_tokens}")
    if gone:
        details.append("(client gone)")
    return line + (" | " + " ".join(details) if details else "")


def _duration(seconds: float) -> str:
    """Go's way of printing a duration, as GIN's log shows it (`1.234567s`, `12.5ms`)."""
    if seconds >= 1:
        return f"{seconds:.6f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.6f}ms"
    return f"{seconds * 1e6:.3f}µs"


class RequestLogMiddleware:
    """ASGI middleware: times each `http` request and logs its line when the response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord()
        token = _current.set(record)
        t_start = time.perf_counter()
        status: int | None = None
        finished = False

        async def logged_send(message: dict) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        gone = False
        try:
            await self.app(scope, receive, logged_send)
        except trio.Cancelled:
            gone = True
            raise
        finally:
            _current.reset(token)
            client = scope.get("client")
            log.info(
                "%s",
                format_line(
                    status=status if status is not None else 499,
                    seconds=time.perf_counter() - t_start,
                    client=str(client[0]) if client else "-",
                    method=str(scope.get("method", "")),
                    path=str(scope.get("path", "")),
                    record=record,
                    gone=(gone or not finished) and status is not None,
                ),
            )


def start_request_log() -> Callable[[], None]:
    """Send `power.requests` lines through a queue to a writer thread (stderr); returns the
    function that flushes and stops it."""
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(lines)
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(lines, writer)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    listener.start()

    def stop() -> None:
        listener.stop()
        log.removeHandler(handler)
        log.propagate = True

    return stop
