"""Progress streams of /api/pull, /api/push and /api/create: Ollama's NDJSON status lines.

The work (a pull, a push, a create) reports status dicts through a callback that never blocks;
the client reads them at its own pace. A slow reader gets merged progress, never a stalled
pull, and never loses a line that matters:

- `ProgressQueue` keeps the lines not yet sent. A progress line (one with `completed`) replaces
  the unsent line of the same status and digest, in place; every other line (a new status, the
  final `success`, an `error`) is kept. So the queue holds at most one line per status, whatever
  the reader's pace.
- `ProgressBody` is the response body, a context-managed stream: quart enters it
  (`async with response.response as body`), which starts the work in a nursery that the body
  owns; quart then iterates it; leaving it (the end, an error, or a client disconnect, which
  cancels quart's task) cancels the work and waits for it. No `yield` happens inside a nursery
  or a cancel scope: the iterator is a plain `__anext__` that receives from the queue.

When the work raises, its error becomes the last line, `{"error": message}` (`errors.describe`:
no server paths).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, jsonify
from quart.wrappers.response import ResponseBody

from power.http.errors import describe
from power.http.schemas import RequestError
from power.http.streaming import ndjson_line

Event = dict[str, Any]
Report = Callable[[Event], None]
Work = Callable[[Report], Awaitable[None]]


def _merge_key(event: Event) -> tuple[Any, Any] | None:
    """Lines with the same key may be merged (progress of one status); None: never merged."""
    if "completed" not in event:
        return None
    return (event.get("status"), event.get("digest"))


class ProgressQueue:
    """The lines of a progress stream not yet sent (see the module docstring)."""

    def __init__(self) -> None:
        self._pending: list[Event] = []
        self._slots: dict[tuple[Any, Any], int] = {}  # merge key → index in _pending
        self._closed = False
        self._wakeup = trio.Event()

    def put(self, event: Event) -> None:
        """Add a line (never blocks); ignored once the queue is closed."""
        if self._closed:
            return
        key = _merge_key(event)
        if key is not None and key in self._slots:
            self._pending[self._slots[key]] = event
        else:
            if key is not None:
                self._slots[key] = len(self._pending)
            self._pending.append(event)
        self._wakeup.set()

    def close(self, last: Event | None = None) -> None:
        """No more lines will come, after `last` if given (an error line)."""
        if self._closed:
            return
        if last is not None:
            self._pending.append(last)
        self._closed = True
        self._wakeup.set()

    async def next_batch(self) -> list[Event]:
        """The unsent lines, in order, once there is one; [] when closed and all are sent."""
        while not self._pending:
            if self._closed:
                return []
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        batch = self._pending
        self._pending, self._slots = [], {}
        return batch


class ProgressBody(ResponseBody):
    """A response body that runs `work(report)` while quart sends what it reports."""

    def __init__(self, work: Work, context: str = "") -> None:
        self._work = work
        self._context = context
        self._queue = ProgressQueue()
        self._nursery_manager: Any = None
        self._cancel_scope: trio.CancelScope | None = None

    async def _run(self) -> None:
        last = None
        try:
            await self._work(self._queue.put)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged if unexpected
            last = {"error": describe(exc, self._context)[1]}
        finally:
            self._queue.close(last)

    async def __aenter__(self) -> ProgressBody:
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        self._cancel_scope = nursery.cancel_scope
        nursery.start_soon(self._run)
        return self

    async def __aexit__(self, *exc_info: object) -> bool:
        # the end, an error or a disconnect: stop the work, wait for it; quart's own exception
        # (if any) propagates unchanged
        self._cancel_scope.cancel()
        await self._nursery_manager.__aexit__(None, None, None)
        return False

    def __aiter__(self) -> ProgressBody:
        return self

    async def __anext__(self) -> bytes:
        batch = await self._queue.next_batch()
        if not batch:
            raise StopAsyncIteration
        return b"".join(ndjson_line(event) for event in batch)


async def progress_response(work: Work, *, stream: bool, context: str = "") -> Response:
    """NDJSON progress lines while `work` runs, or (not `stream`) its last line as one JSON
    object once it is done: an error is then a plain error answer with its status."""
    if stream:
        response = Response(ProgressBody(work, context), mimetype="application/x-ndjson")
        response.timeout = None
        return response
    events: list[Event] = []
    try:
        await work(events.append)
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - the answer's status and message
        raise RequestError(*describe(exc, context)) from None
    return jsonify(events[-1] if events else {"status": "success"})
