"""Request bodies that cannot fill the server's memory.

quart reads every request body from the server as fast as the client sends it, into one
buffer, whether or not the handler ever reads it: a refused 1 GiB upload was a 1 GiB buffer.
Here the ASGI side takes data from hypercorn only while the buffer has room, so a body the
handler does not read stays in the client, the kernel and hypercorn's queue of 10 messages
(hypercorn stops reading the socket then: TCP's own backpressure):

- a body starts with `STREAM_BUFFER` bytes of room: what a streaming reader
  (`async for chunk in request.body`, the blob upload) needs, and all that a request refused
  before its body was read (401, 403, 404…) ever costs;
- a route that needs the whole body at once (every JSON route) calls `buffer_whole(limit)`: up
  to `limit` bytes are buffered, and more is a 413 (the rest is discarded, never kept);
- `discard(max_bytes)` reads and throws away the rest of a body, for a response given before
  its request was read; `received_all` tells whether the client has sent it all.

`PowerRequest` and `BoundedHTTPConnection` plug this into quart-trio (`power.http.app`).
"""

from __future__ import annotations

from typing import Any

import trio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge

#: Room of a body nobody asked to buffer whole (a streaming reader's window).
STREAM_BUFFER = 1 << 20


class BoundedBody(TrioBody):
    """quart's request body with a bounded buffer (see the module docstring)."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, max_content_length)
        self.high_water = STREAM_BUFFER
        self.n_received = 0
        self.received_all = False
        self._room = trio.Event()
        self._room.set()
        self._arrival = trio.Event()  # set (and replaced) whenever data or the end arrives

    def buffer_whole(self, limit: int) -> None:
        """Let the whole body be buffered, up to `limit` bytes; beyond, reading it raises 413."""
        self._max_content_length = limit
        self.high_water = limit + 1
        if self.n_received > limit and self._must_raise is None:
            self._must_raise = RequestEntityTooLarge()
            self._data.clear()
            self.set_complete()
        self._update_room()

    def append(self, data: bytes) -> None:
        self.n_received += len(data)
        super().append(data)
        if self._must_raise is not None:
            self._data.clear()  # refused: what arrives is discarded, never kept
        self._update_room()
        self._arrived()

    def finish(self) -> None:
        """The client has sent the whole body."""
        self.received_all = True
        self.set_complete()
        self._update_room()
        self._arrived()

    def _arrived(self) -> None:
        self._arrival.set()
        self._arrival = trio.Event()

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        finally:
            self._update_room()

    def clear(self) -> None:
        super().clear()
        self._update_room()

    def has_room(self) -> bool:
        return (
            self.received_all or self._must_raise is not None or len(self._data) < self.high_water
        )

    async def wait_for_room(self) -> None:
        while not self.has_room():
            await self._room.wait()

    def _update_room(self) -> None:
        if self.has_room():
            self._room.set()
        elif self._room.is_set():
            self._room = trio.Event()

    async def discard(self, max_bytes: int) -> bool:
        """Read and drop the rest of the body while it stays within `max_bytes` more bytes;
        whether the whole body has been received."""
        start = self.n_received
        self.high_water = STREAM_BUFFER
        while not self.received_all and self.n_received - start <= max_bytes:
            arrival = self._arrival
            self._data.clear()
            self._update_room()
            await arrival.wait()
        self._data.clear()
        self._update_room()
        return self.received_all


class PowerRequest(TrioRequest):
    body_class = BoundedBody


class BoundedHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, taking body data from the server only while the request's
    body has room for it (`BoundedBody.wait_for_room`)."""

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, receive: Any
    ) -> None:
        body: BoundedBody = request.body
        while True:
            await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.finish()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()
