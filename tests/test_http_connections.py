"""Connection hygiene of a real `power serve` (`power.http.connections`): thousands of idle or
half-open connections cannot starve other clients, a header or a body that does not arrive in
time closes its connection, and a refused upload costs neither memory nor the client its answer.

Nothing here waits a fixed time: a closed connection is an event (the socket turns readable
with EOF or a reset), awaited with `selectors` under a generous deadline.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SERVER_PIDS, run_power_server

HALF_REQUEST = b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-"


def port_of(url: str) -> int:
    return httpx.URL(url).port


@pytest.fixture(scope="module", autouse=True)
def enough_files() -> None:
    """Thousands of client sockets in this process need the soft limit raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def open_half_requests(port: int, n: int, data: bytes = HALF_REQUEST) -> list[socket.socket]:
    sockets = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if data:
            sock.sendall(data)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (EOF or reset); False while it is open."""
    try:
        return sock.recv(1 << 16) == b"" or closed_by_server(sock)
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def wait_until_closed(sockets: list[socket.socket], n_wanted: int, timeout: float) -> int:
    """Wait (on readability, up to `timeout` s) until `n_wanted` of `sockets` are closed by the
    server; how many are."""
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < n_wanted and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                if closed_by_server(sock):  # type: ignore[arg-type]
                    closed.add(sock)  # type: ignore[arg-type]
                    selector.unregister(sock)
    return len(closed)


@pytest.fixture
def sockets_to_close() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_idle_connections_beyond_the_cap_are_closed_and_others_served(
    tmp_path: Path, sockets_to_close: list[socket.socket]
):
    """2,100 half-open connections to a server capped at 256: the oldest idle ones are closed
    as new ones arrive, and a new client is answered."""
    store = tmp_path / "models"
    store.mkdir()
    env = {"POWER_MAX_CONNECTIONS": "256", "POWER_HEADER_TIMEOUT": "120"}
    with run_power_server(store, env) as url:
        sockets_to_close += open_half_requests(port_of(url), 2100)
        answer = httpx.get(url + "/api/version", timeout=60)
        assert answer.status_code == 200
        # the answer came after every earlier connection was accepted: the excess is closed
        n_closed = wait_until_closed(sockets_to_close, 2100 - 256, timeout=60)
        assert n_closed >= 2100 - 256
        files = len(list(Path(f"/proc/{SERVER_PIDS[url]}/fd").iterdir()))
        assert files < 256 + 100


def test_headers_and_bodies_that_do_not_arrive_in_time_close_their_connection(
    tmp_path: Path, sockets_to_close: list[socket.socket]
):
    store = tmp_path / "models"
    store.mkdir()
    env = {"POWER_HEADER_TIMEOUT": "1", "POWER_BODY_TIMEOUT": "1"}
    with run_power_server(store, env) as url:
        port = port_of(url)
        idle = open_half_requests(port, 5, data=b"")  # no byte sent: the idle timeout applies
        half_headers = open_half_requests(port, 20)
        half_body = open_half_requests(
            port,
            20,
            data=b"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{",
        )
        sockets_to_close += idle + half_headers + half_body
        assert wait_until_closed(half_headers, 20, timeout=60) == 20
        assert wait_until_closed(half_body, 20, timeout=60) == 20
        # more than the header timeout has passed since these opened: still open
        assert not any(closed_by_server(sock) for sock in idle)
        assert httpx.get(url + "/api/version", timeout=30).status_code == 200


def test_a_kept_alive_connection_serves_many_requests(tmp_path: Path):
    store = tmp_path / "models"
    store.mkdir()
    with (
        run_power_server(store, {"POWER_HEADER_TIMEOUT": "1"}) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        for _ in range(20):
            assert client.get("/api/version").status_code == 200
            assert client.post("/api/show", json={"model": "missing"}).status_code == 404
        assert client.get("/api/tags").json() == {"models": []}


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/blobs/sha256:" + "0" * 64, {}, 401),  # no API key
        ("/api/blobs/sha256:not-a-digest", {"Authorization": "Bearer k"}, 400),
        ("/api/blobs/sha256:" + "0" * 64, {"Authorization": "Bearer k", "Host": "evil.com"}, 403),
    ],
)
def test_a_refused_upload_is_never_read_into_memory(
    tmp_path: Path, path: str, headers: dict, status: int
):
    """A refused 1 GiB upload: the server's memory stays flat (VmRSS sampled while it streams)
    and the client reads the refusal."""
    store = tmp_path / "models"
    store.mkdir()
    with run_power_server(store, {"POWER_API_KEY": "k"}) as url:
        pid = SERVER_PIDS[url]
        before = peak = vm_rss(pid)
        block = b"\0" * (1 << 20)

        def body() -> Iterator[bytes]:
            nonlocal peak
            for i in range(1024):
                yield block
                if i % 8 == 0:
                    peak = max(peak, vm_rss(pid))

        with httpx.Client(base_url=url, timeout=120) as client:
            answer = client.post(path, content=body(), headers=headers)
            assert answer.status_code == status, answer.text
            peak = max(peak, vm_rss(pid))
            assert peak - before < 50 << 20, (before >> 20, peak >> 20)
            assert client.get("/api/version", headers={"Authorization": "Bearer k"}).is_success


# ---------------------------------------------------------------- which connection goes first


class FakeConnection:
    """What ConnectionPool asks of a connection: whether it may be closed, and closing it."""

    def __init__(self, pool, name: str, evictable: bool = True) -> None:
        self.pool, self.name, self.can_go, self.evicted = pool, name, evictable, False

    def evictable(self) -> bool:
        return self.can_go and not self.evicted

    def evict(self) -> None:
        self.evicted = True
        self.pool.remove(self)


async def test_the_pool_closes_half_open_connections_before_kept_alive_ones():
    from power.http.connections import ConnectionPool

    pool = ConnectionPool(limit=3)
    kept_alive = FakeConnection(pool, "kept-alive")
    busy = FakeConnection(pool, "answering", evictable=False)
    for connection in (kept_alive, busy):
        pool.add(connection)
        pool.progressed(connection, whole_request=True)
    flood = [FakeConnection(pool, f"half-open {i}") for i in range(3)]
    for connection in flood:
        pool.add(connection)
        pool.make_room(connection)
    # each newcomer beyond the limit closed the oldest half-open one, never the others
    assert [c.evicted for c in flood] == [True, True, False]
    assert not kept_alive.evicted and not busy.evicted
    pool.progressed(flood[2], whole_request=True)  # it sent a whole request: now proven
    # a new client displaces the proven connection that has waited longest, not itself
    pool.add(newcomer := FakeConnection(pool, "newcomer"))
    pool.make_room(newcomer)
    assert kept_alive.evicted and not newcomer.evicted and not flood[2].evicted
    # a connection the server is closing goes before any other
    pool.closing(flood[2])
    assert pool.victim() is flood[2]
    # nothing else can go: the newcomer is refused
    pool.add(other := FakeConnection(pool, "other"))
    busy_too = [newcomer, flood[2]]
    for connection in busy_too:
        connection.can_go = False
    pool.make_room(other)
    assert other.evicted
    assert len(pool) == 3
