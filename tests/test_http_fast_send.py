"""`GuardedTCPServer`'s direct send (`power.http.connections`): a streamed body's writes go to the
socket at once while nothing else sends, and the rest of a write the kernel could not take at
once (its buffer full, a slow reader) goes through hypercorn's path: the client gets every
byte, in order, with hypercorn's framing.

An in-process app on a real loopback socket; the reader waits, without reading, until the
server is blocked on the full socket, then reads everything.
"""

from __future__ import annotations

import h11
import trio
import trio.testing
from hypercorn.config import Config
from quart import Response
from quart_trio import QuartTrio

from power.http import connections
from power.http.connections import ConnectionLimits, GuardedTCPServer

SMALL = [b'{"response":"token %d","done":false}\n' % i for i in range(200)]
LARGE = [bytes([i]) * (3 << 20) for i in range(1, 4)]  # far more than a socket buffer holds
CHUNKS = SMALL + LARGE + [b'{"done":true}\n']


def streaming_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/stream")
    async def stream() -> Response:
        async def body():
            for chunk in CHUNKS:
                yield chunk
                if chunk in SMALL[:100]:
                    await trio.lowlevel.checkpoint()  # half the tokens "wait" for the next one

        response = Response(body(), mimetype="application/x-ndjson")
        response.timeout = None
        return response

    return app


async def read_response(stream: trio.SocketStream) -> tuple[int, bytes]:
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(
        client.send(h11.Request(method="GET", target="/stream", headers=[("Host", "127.0.0.1")]))
    )
    await trio.testing.wait_all_tasks_blocked()  # the server fills the socket, then waits
    status, body = 0, bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(1 << 16))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)


async def test_a_streamed_body_arrives_whole_through_both_send_paths(monkeypatch):
    outcomes: list[int | None] = []
    send_now = GuardedTCPServer._send_now

    def counting(self: GuardedTCPServer, data: bytes) -> int | None:
        sent = send_now(self, data)
        outcomes.append(None if sent is None else (sent == len(data)))
        return sent

    monkeypatch.setattr(GuardedTCPServer, "_send_now", counting)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: connections.serve(
                streaming_app(),
                config,
                ConnectionLimits(),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            status, body = await read_response(stream)
        stop.set()
    assert status == 200
    assert body == b"".join(CHUNKS)
    assert outcomes.count(True) >= len(SMALL) // 2  # token-sized writes: sent at once
    assert False in outcomes  # a large write the kernel took only in part: the rest waited
