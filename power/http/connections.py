"""Connection hygiene: hypercorn's trio worker with read timeouts, a connection cap and a
lingering close, so that no client can hold the server's connections or files.

What hypercorn 0.18 lacks for a server on an open port: its `read_timeout` bounds every single
receive, also while the server computes a long answer for a silent client (it would cut a
five-minute generation) and not the whole header (one byte every few seconds keeps it alive);
there is no cap on open connections (10,000 half-open connections held 20,000 files and
stalled `GET /api/version` for seconds); and a connection closed while the client still sends
a body the server refused is reset, so the client may never read the answer (a 401, a 413).

`serve` replaces `hypercorn.trio.serve` (lifespan, sockets and the graceful shutdown as
hypercorn does them) with an accept loop of its own, and runs each connection in
`GuardedTCPServer`, hypercorn's `TCPServer` with a reader that knows what it waits for:

    IDLE ──first byte──> HEADERS ──headers complete──> BODY ──body complete──> ANSWERING
      ^                     (header_timeout             (body_timeout per         |
      |                      from the first byte)        silence)                 |
      └──────────────────────── response sent, connection kept alive ─────────────┘
    any state ──the server closes──> CLOSING: our FIN is sent; what the client still sends is
                                     read and discarded (for at most LINGER_SECONDS, never
                                     kept), then the socket is closed.

IDLE is bounded by hypercorn's keep-alive timeout (`idle_timeout`); ANSWERING has no timeout
(the server is the one working; a client that goes away is seen at once). A connection is
*evictable* while the server waits on its client: IDLE, HEADERS, CLOSING, and BODY while the
reader is parked on the socket. When `max_connections` are open, each new connection closes
the evictable one that has waited longest, lingering ones first and connections that never
sent a whole request before those that did (`ConnectionPool`); when none is evictable, the
accept loop waits (new connections queue in the kernel's backlog) until one is.

Relies on hypercorn 0.18's `TCPServer` internals (`_read_data`, `protocol_send`, the h11
protocol's `connection`); `tests/test_http_connections.py` holds them to it.
"""

from __future__ import annotations

import collections
import enum
import errno
import logging
import math
import resource
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

log = logging.getLogger("power.connections")

#: How long a closing connection reads and discards what its client still sends, so that the
#: client reads the answer before the close (a reset could destroy it in the client's buffers),
#: and how much it reads at a time then (about 400 MB/s here).
LINGER_SECONDS = 5.0
LINGER_RECV = 1 << 20

#: A body that writes without ever waiting yields to trio at least once per this many writes.
FAST_SENDS_PER_YIELD = 64

#: accept() errors that mean "out of files or memory for now" (as trio's serve_listeners).
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@attrs.frozen
class ConnectionLimits:
    """The knobs (power.config.Settings names them): `max_connections` open at once,
    `header_timeout` from a request's first byte to its last header byte, `body_timeout` the
    longest silence while a request body arrives (`math.inf`: none)."""

    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0


class Phase(enum.Enum):
    """What a connection's reader waits for (see the module docstring's diagram)."""

    IDLE = "idle"
    HEADERS = "headers"
    BODY = "body"
    ANSWERING = "answering"
    CLOSING = "closing"


class ConnectionPool:
    """The open connections and the choice of which to close when there are too many.

    Two queues, each in the order its clients last made progress (the front has waited
    longest): `fresh` connections have not yet sent one whole request, `proven` ones have.
    A victim is the first evictable fresh connection, else the first evictable proven one,
    and never the newcomer while another can go: a flood of half-open connections displaces
    itself before it displaces a client's kept-alive connection, and a new client displaces
    the idle connection that has waited longest. Progress is a request received whole, an
    answer completed or body bytes received; a connection the server closes moves to the very
    front. Finding a victim walks from the front past connections with a request in progress:
    O(1) while the oldest are idle."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fresh: collections.OrderedDict[GuardedTCPServer, None] = collections.OrderedDict()
        self.proven: collections.OrderedDict[GuardedTCPServer, None] = collections.OrderedDict()
        self.n_evicted = 0
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self.fresh) + len(self.proven)

    def add(self, connection: GuardedTCPServer) -> None:
        self.fresh[connection] = None

    def remove(self, connection: GuardedTCPServer) -> None:
        self.fresh.pop(connection, None)
        self.proven.pop(connection, None)
        self.changed()

    def progressed(self, connection: GuardedTCPServer, *, whole_request: bool = False) -> None:
        """`connection`'s client made progress (`whole_request`: sent a whole request)."""
        if whole_request and connection in self.fresh:
            del self.fresh[connection]
            self.proven[connection] = None
        for queue in (self.fresh, self.proven):
            if connection in queue:
                queue.move_to_end(connection)

    def closing(self, connection: GuardedTCPServer) -> None:
        """The server is closing `connection`: it is the first to go if room is needed."""
        if connection in self.proven:
            del self.proven[connection]
            self.fresh[connection] = None
        if connection in self.fresh:
            self.fresh.move_to_end(connection, last=False)
        self.changed()

    def changed(self) -> None:
        """A connection closed or may have become evictable: wake the accept loop."""
        self._changed.set()
        self._changed = trio.Event()

    def victim(self, sparing: GuardedTCPServer | None = None) -> GuardedTCPServer | None:
        """The evictable connection that has waited on its client longest (fresh ones
        first), other than `sparing`; None if there is none."""
        for queue in (self.fresh, self.proven):
            for connection in queue:
                if connection is not sparing and connection.evictable():
                    return connection
        return None

    async def wait_for_room(self) -> None:
        """Return when a new connection may be accepted: below the limit, or with a victim."""
        while len(self) >= self.limit and self.victim() is None:
            await self._changed.wait()

    def evict_one(self, sparing: GuardedTCPServer | None = None) -> bool:
        """Close the longest-waiting evictable connection but `sparing`; whether there was
        one."""
        victim = self.victim(sparing)
        if victim is None:
            return False
        if victim in self.proven:
            log.debug("closing a kept-alive connection: too many connections")
        victim.evict()
        self.n_evicted += 1
        return True

    def make_room(self, newcomer: GuardedTCPServer) -> None:
        """Over the limit: close the longest-waiting evictable connection other than the
        `newcomer` (which has had no chance to send anything yet), or else the newcomer."""
        if len(self) > self.limit and not self.evict_one(sparing=newcomer):
            newcomer.evict()
            self.n_evicted += 1


class GuardedTCPServer(TCPServer):
    """hypercorn's TCPServer with the phases, timeouts and lingering close described above."""

    def __init__(self, *args: Any, pool: ConnectionPool, limits: ConnectionLimits) -> None:
        super().__init__(*args)
        self.pool = pool
        self.limits = limits
        self.cancel_scope = trio.CancelScope()
        self._evicted = False
        self._idle = True  # no request between its headers and its answer (hypercorn's view)
        self._closing_since: float | None = None
        self._first_byte_at: float | None = None  # of the request whose headers are arriving
        self._parked = False  # the reader waits on the socket
        self._receive_scope: trio.CancelScope | None = None
        self._handling: trio.CancelScope | None = None
        self._reader: trio.lowlevel.Task | None = None
        self._fast_sends = 0

    # ------------------------------------------------------------ state

    def phase(self) -> Phase:
        if self._closing_since is not None:
            return Phase.CLOSING
        connection = getattr(getattr(self, "protocol", None), "protocol", None)
        connection = getattr(connection, "connection", None)
        if isinstance(connection, h11.Connection):
            their_state = connection.their_state
            if their_state is h11.IDLE:
                return Phase.IDLE if self._first_byte_at is None else Phase.HEADERS
            if their_state is h11.SEND_BODY:
                return Phase.BODY
            return Phase.ANSWERING
        return Phase.IDLE if self._idle else Phase.ANSWERING  # HTTP/2, websockets

    def evictable(self) -> bool:
        if self._evicted:
            return False
        phase = self.phase()
        return phase in (Phase.IDLE, Phase.HEADERS, Phase.CLOSING) or (
            phase is Phase.BODY and self._parked
        )

    def evict(self) -> None:
        """Close this connection now (a request in progress sees a client disconnect)."""
        self._evicted = True
        self.cancel_scope.cancel()
        self.pool.remove(self)

    def _deadline(self) -> float:
        phase = self.phase()
        now = trio.current_time()
        if phase is Phase.CLOSING:
            return self._closing_since + LINGER_SECONDS
        if phase is Phase.HEADERS:
            return self._first_byte_at + self.limits.header_timeout
        if phase is Phase.BODY:
            return now + self.limits.body_timeout
        return math.inf  # IDLE: hypercorn's keep-alive timer; ANSWERING: the server works

    def _rearm(self) -> None:
        if self._receive_scope is not None:
            self._receive_scope.deadline = self._deadline()

    # ------------------------------------------------------------ hypercorn's hooks

    async def protocol_send(self, event: Any) -> None:
        if type(event) is RawData:
            sent = self._send_now(event.data)
            if sent is not None:
                if sent == len(event.data):
                    return
                if sent:
                    event = RawData(data=event.data[sent:])  # the rest: hypercorn's path
        if isinstance(event, Closed):
            await self._begin_close()
            await self.protocol.handle(Closed())
            return
        await super().protocol_send(event)
        if isinstance(event, Updated):
            self._idle = event.idle
            if event.idle:  # an answer is complete and the connection is kept alive
                self._first_byte_at = None
                self.pool.progressed(self)
                self.pool.changed()
            else:  # a request's headers are complete
                self.pool.progressed(self, whole_request=True)
            self._rearm()

    def _send_now(self, data: bytes) -> int | None:
        """Hand `data` to the kernel at once if nothing else is sending; how many bytes went
        (hypercorn's path sends the rest: its lock, `send_all`, waiting for room), or None
        when this path is not taken (hypercorn's sends it all).

        A streamed answer writes one small chunk per token: hypercorn's path takes its send
        lock and `send_all` and yields to trio's scheduler twice per write, two more rounds of
        the event loop (an `epoll_wait` each) for every token of every stream. Here the write
        is one `send` on the non-blocking socket. It does not yield: a body that never
        awaits anything else goes through hypercorn's path every `FAST_SENDS_PER_YIELD`
        writes, so it cannot starve the other tasks. Only HTTP/1.1 answers to a request
        received whole take it (a streamed generation's are): an answer given while the
        request body still arrives (a refusal, an existing blob) keeps hypercorn's timing."""
        if not data or self.send_lock.locked() or self._closing_since is not None:
            return None
        connection = getattr(getattr(self.protocol, "protocol", None), "connection", None)
        if not isinstance(connection, h11.Connection) or connection.their_state is not h11.DONE:
            return None  # only once the whole request is in: an early answer keeps hypercorn's
        self._fast_sends += 1
        if self._fast_sends % FAST_SENDS_PER_YIELD == 0:
            return None
        socket = getattr(self.stream, "socket", None)  # a trio.SocketStream (not TLS)
        raw = getattr(socket, "_sock", None)
        if raw is None or socket.did_shutdown_SHUT_WR:
            return None
        try:
            return raw.send(data)
        except BlockingIOError:
            return 0  # the kernel's buffer is full: hypercorn's path waits for room
        except OSError:
            return None  # broken: hypercorn's path reports it as it does

    async def _begin_close(self) -> None:
        """The server is done with this connection: send our FIN after the last answer byte,
        then let the reader discard what the client still sends (bounded) before closing."""
        if self._closing_since is not None:
            return
        self._closing_since = trio.current_time()
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        except AttributeError:  # a TLS stream has no half-close
            pass
        if self._handling is not None and trio.lowlevel.current_task() is not self._reader:
            # the reader may be stuck handing body data to an application that has finished
            self._handling.cancel()
        self._rearm()
        self.pool.closing(self)

    async def _read_data(self) -> None:
        self._reader = trio.lowlevel.current_task()
        while True:
            if self.phase() is Phase.BODY and len(self.pool) >= self.pool.limit:
                self.pool.changed()  # parked on a body: evictable, if the accept loop waits
            data = None
            with trio.CancelScope(deadline=self._deadline()) as self._receive_scope:
                self._parked = True
                try:
                    closing = self._closing_since is not None
                    data = await self.stream.receive_some(LINGER_RECV if closing else MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                finally:
                    self._parked = False
            self._receive_scope = None
            if data is None:  # a header, body or linger timeout
                log.debug("closing a connection: %s timeout", self.phase().value)
                break
            if not data:
                break
            phase = self.phase()
            if phase is Phase.CLOSING:
                continue  # lingering: discarded
            if phase is Phase.IDLE:
                self._first_byte_at = trio.current_time()
            elif phase is Phase.BODY:
                self.pool.progressed(self)
            with trio.CancelScope() as self._handling:
                await self.protocol.handle(RawData(bytes(data)))
            self._handling = None
        # hypercorn's keep-alive timer would hold the closed connection (and its file) until
        # it expires: the connection is over once its reader is
        await self.idle_task.stop()
        await self.protocol.handle(Closed())


async def _serve_connection(server: GuardedTCPServer) -> None:
    """Run one connection (already in its pool) until it closes or is evicted."""
    try:
        with server.cancel_scope:
            await server.run()
    finally:
        server.pool.remove(server)
        await trio.aclose_forcefully(server.stream)


async def _accept_loop(
    listener: trio.SocketListener,
    pool: ConnectionPool,
    nursery: trio.Nursery,
    make_server: Callable[[trio.SocketStream], GuardedTCPServer],
) -> None:
    while True:
        await pool.wait_for_room()
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            # out of files: close the longest-waiting idle connection, else wait a little
            if pool.evict_one():
                await trio.lowlevel.checkpoint()
            else:
                log.error("accept failed (%s): waiting for connections to close", exc)
                await trio.sleep(0.1)
            continue
        server = make_server(stream)
        pool.add(server)
        nursery.start_soon(_serve_connection, server)
        pool.make_room(server)


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d: %s", soft, exc)
    return soft


async def serve(
    app: Any,
    config: Config,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`hypercorn.trio.serve(app, config)` for plain-HTTP binds, with `GuardedTCPServer`
    connections and the cap of `limits`. `task_status.started(binds)` once listening; returns
    after `shutdown_trigger` returns and the graceful shutdown is done."""
    config.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    pool = ConnectionPool(limits.max_connections)

    def make_server(stream: trio.SocketStream) -> GuardedTCPServer:
        return GuardedTCPServer(
            asgi,
            config,
            context,
            ConnectionState(lifespan_state.copy()),
            stream,
            pool=pool,
            limits=limits,
        )

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"http://{bind}")
                await config.log.info(f"Running on http://{bind} (CTRL + C to quit)")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for listener in listeners:
                        nursery.start_soon(
                            partial(_accept_loop, listener, pool, server_nursery, make_server)
                        )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
