"""Security and robustness of a real `power serve`: methods and unknown paths, the DNS-rebinding
guard on Host headers, CORS, the optional API key, body size limits and blob uploads, client
disconnects mid-stream, bad token ids, and failing pulls.

Servers are `power serve` subprocesses; the ones whose store is written to (blobs) or whose models
a test may break run on a private store (empty, or hard links to the shared test models).

The clients here send `Connection: close`, which keeps each test independent of the connection
before it; test_connection_survives_an_answer_sent_before_the_body shows on its own what happens
to a kept-alive connection answered before its request body was read (404, 405, 401, 403, 413, a
bad blob digest): `power.http.app` drains a short rest or closes the connection after the answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import GEMMA, MINILM, free_port, run_power_server

MAX_JSON_BODY = 64 * 1024 * 1024
LOCAL_ORIGIN = "http://localhost:3000"
FOREIGN_ORIGIN = "https://app.example.com"
API_KEY = "s3cret-key"
ONE_SHOT = {"Connection": "close"}

#: (method, path, JSON body) of every route, for the API-key checks.
ROUTES: list[tuple[str, str, dict | None]] = [
    ("GET", "/api/version", None),
    ("GET", "/api/status", None),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("GET", "/health", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/missing", None),
    ("GET", "/v1/usage", None),
    ("POST", "/api/generate", {"model": "missing"}),
    ("POST", "/api/chat", {"model": "missing"}),
    ("POST", "/api/embed", {"model": "missing"}),
    ("POST", "/api/embeddings", {"model": "missing"}),
    ("POST", "/api/pull", {"model": "bad name"}),
    ("POST", "/api/push", {"model": "bad name"}),
    ("POST", "/api/create", {"model": "bad name"}),
    ("POST", "/api/show", {"model": "missing"}),
    ("POST", "/api/copy", {"source": "missing", "destination": "other"}),
    ("DELETE", "/api/delete", {"model": "missing"}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("GET", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/v1/chat/completions", {"model": "missing", "messages": []}),
    ("POST", "/v1/completions", {"model": "missing"}),
    ("POST", "/v1/embeddings", {"model": "missing"}),
]


def private_store_copy(model_store: Path, root: Path) -> Path:
    """A store with the shared test models, as hard links (cheap; blobs are never written)."""
    destination = root / "models"
    shutil.copytree(model_store, destination, copy_function=os.link)
    return destination


@pytest.fixture(scope="module")
def empty_store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server with an empty private store; yields (base URL, store root)."""
    store = tmp_path_factory.mktemp("security") / "models"
    store.mkdir()
    with run_power_server(store) as url:
        yield url, store


@pytest.fixture(scope="module")
def http(empty_store_server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=empty_store_server[0], timeout=60, headers=ONE_SHOT) as client:
        yield client


def assert_json_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str)


def assert_serving(http: httpx.Client) -> None:
    answer = http.get("/")
    assert answer.status_code == 200 and answer.text == "Ollama is running"


# ---------------------------------------------------------------- (a) methods and paths


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/generate"),
        ("PUT", "/api/chat"),
        ("GET", "/api/embed"),
        ("POST", "/api/tags"),
        ("PATCH", "/api/show"),
        ("GET", "/api/delete"),
        ("POST", "/api/version"),
        ("DELETE", "/v1/models"),
        ("GET", "/v1/chat/completions"),
        ("PUT", "/api/blobs/sha256:" + "0" * 64),
    ],
)
def test_wrong_method_is_a_json_405(http: httpx.Client, method: str, path: str):
    assert_json_error(http.request(method, path), 405)


@pytest.mark.parametrize("path", ["/nope", "/api/nope", "/api/generate/extra", "/v1/nope", "/v2/"])
def test_unknown_path_is_a_json_404(http: httpx.Client, path: str):
    assert_json_error(http.get(path), 404)
    assert_json_error(http.post(path, json={}), 404)


def read_http_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length body, or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return data
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            (
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            b"0",
        )
    )
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("path", ["/nope", "/api/tags"])
def test_connection_survives_an_answer_sent_before_the_body(
    empty_store_server: tuple[str, Path], path: str
):
    """Headers first, body second (as httpx and most clients write them). Whether the server
    answers before the body (then the body must be skipped) or after it, the next request on the
    connection is answered, or the connection is closed so that the client can reconnect."""
    port = httpx.URL(empty_store_server[0]).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\n\r\n".encode()
        )
        sock.settimeout(1)  # a bounded wait: does the server answer before the body?
        try:
            early = read_http_response(sock)
        except TimeoutError:
            early = b""
        if early:
            # a bounded wait for the server to close the connection (a correct answer too);
            # it also lets the body arrive after the answer, which is what hangs
            sock.settimeout(0.5)
            try:
                if sock.recv(1) == b"":
                    return
            except TimeoutError:
                pass
        sock.settimeout(5)
        try:
            sock.sendall(b"{}")
        except (BrokenPipeError, ConnectionResetError):
            return  # closed by the server: the client reconnects
        first = early or read_http_response(sock)
        assert first.startswith((b"HTTP/1.1 404", b"HTTP/1.1 405")), first
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            second = read_http_response(sock)
        except TimeoutError:
            pytest.fail("the connection hangs: the next request is never answered")
        assert second == b"" or second.endswith(b"Ollama is running"), second


# ---------------------------------------------------------------- (b) Host header guard


@pytest.mark.parametrize(
    "host", ["evil.example.com", "evil.example.com:11434", "localhost.evil.com", "example.org"]
)
def test_foreign_host_header_is_refused_on_loopback(http: httpx.Client, host: str):
    assert_json_error(http.get("/api/version", headers={"Host": host}), 403)
    assert_json_error(http.post("/api/show", json={"model": "x"}, headers={"Host": host}), 403)


def test_local_host_headers_are_accepted(http: httpx.Client):
    port = httpx.URL(str(http.base_url)).port
    for host in (
        "localhost",
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        "[::1]",
        f"[::1]:{port}",
        "foo.localhost",
        "127.0.0.1",
    ):
        answer = http.get("/api/version", headers={"Host": host})
        assert answer.status_code == 200, (host, answer.text)


# ---------------------------------------------------------------- (c) CORS


def test_allowed_origin_is_echoed(http: httpx.Client):
    answer = http.get("/api/version", headers={"Origin": LOCAL_ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    assert "Origin" in answer.headers.get("Vary", "")
    error = http.post("/api/show", json={"model": "missing"}, headers={"Origin": LOCAL_ORIGIN})
    assert error.status_code == 404  # errors carry the header too, so browsers can read them
    assert error.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN


def test_preflight_answers_204_with_allow_headers(http: httpx.Client):
    answer = http.options(
        "/api/chat",
        headers={
            "Origin": LOCAL_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    methods = answer.headers["Access-Control-Allow-Methods"]
    assert "POST" in methods and "DELETE" in methods
    allowed = answer.headers["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed


def test_foreign_origin_is_refused_by_default(http: httpx.Client):
    assert_json_error(http.get("/api/version", headers={"Origin": FOREIGN_ORIGIN}), 403)
    preflight = http.options(
        "/api/chat", headers={"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_origin_listed_in_power_origins_is_allowed(tmp_path: Path):
    store = tmp_path / "models"
    store.mkdir()
    with (
        run_power_server(store, {"POWER_ORIGINS": FOREIGN_ORIGIN}) as url,
        httpx.Client(base_url=url, timeout=30, headers=ONE_SHOT) as client,
    ):
        answer = client.get("/api/version", headers={"Origin": FOREIGN_ORIGIN})
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == FOREIGN_ORIGIN
        preflight = client.options(
            "/api/chat", headers={"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == FOREIGN_ORIGIN
        # the defaults still hold; other foreign origins are still refused
        assert client.get("/", headers={"Origin": LOCAL_ORIGIN}).status_code == 200
        other = client.get("/api/version", headers={"Origin": "https://evil.example.com"})
        assert_json_error(other, 403)


# ---------------------------------------------------------------- (d) API key


def test_api_key_guards_every_route_but_root(tmp_path: Path):
    store = tmp_path / "models"
    store.mkdir()
    with (
        run_power_server(store, {"POWER_API_KEY": API_KEY}) as url,
        httpx.Client(base_url=url, timeout=30, headers=ONE_SHOT) as client,
    ):
        assert client.get("/").text == "Ollama is running"
        for method, path, body in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                if method != "HEAD":
                    assert isinstance(answer.json()["error"], str)
            good = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert good.status_code != 401, (method, path)
            assert good.status_code < 500, (method, path, good.text)
        version = client.get("/api/version", headers={"Authorization": f"Bearer {API_KEY}"})
        assert version.status_code == 200 and "version" in version.json()
        # a CORS preflight carries no credentials: it is answered without the key
        preflight = client.options(
            "/api/chat", headers={"Origin": LOCAL_ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204


# ---------------------------------------------------------------- (e) body size and blobs


def repeated(chunk: bytes, total: int) -> Iterator[bytes]:
    """`total` bytes made of `chunk`, produced lazily."""
    sent = 0
    while sent < total:
        n = min(len(chunk), total - sent)
        sent += n
        yield chunk[:n]


def test_json_body_over_the_limit_is_a_413(http: httpx.Client):
    headers = {"Content-Type": "application/json", "Content-Length": str(MAX_JSON_BODY + 1)}
    declared = http.post(
        "/api/generate", content=repeated(b" " * (1 << 20), MAX_JSON_BODY + 1), headers=headers
    )
    assert_json_error(declared, 413)
    assert_serving(http)
    # chunked: no Content-Length, the limit applies while reading
    chunked = http.post(
        "/api/chat",
        content=repeated(b" " * (1 << 20), MAX_JSON_BODY + (1 << 20)),
        headers={"Content-Type": "application/json"},
    )
    assert_json_error(chunked, 413)
    assert_serving(http)


def test_blob_upload_over_the_json_limit_round_trips(
    http: httpx.Client, empty_store_server: tuple[str, Path]
):
    size = 70 * 1024 * 1024
    chunk = b"\0" * (1 << 20)
    digest = "sha256:" + hashlib.sha256(b"".join(repeated(chunk, size))).hexdigest()
    path = f"/api/blobs/{digest}"
    assert http.head(path).status_code == 404
    upload = http.post(path, content=repeated(chunk, size), headers={"Content-Length": str(size)})
    assert upload.status_code == 201, upload.text
    assert http.head(path).status_code == 200
    hasher = hashlib.sha256()
    n_bytes = 0
    with http.stream("GET", path) as download:
        assert download.status_code == 200
        for part in download.iter_bytes():
            hasher.update(part)
            n_bytes += len(part)
    assert n_bytes == size and "sha256:" + hasher.hexdigest() == digest
    assert http.delete(path).status_code == 200
    assert http.head(path).status_code == 404
    assert_json_error(http.delete(path), 404)


def test_blob_upload_with_the_wrong_digest_stores_nothing(
    http: httpx.Client, empty_store_server: tuple[str, Path]
):
    store = empty_store_server[1]
    data = b"not the bytes the digest names" * 1000
    claimed = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    assert_json_error(http.post(f"/api/blobs/{claimed}", content=data), 400)
    assert http.head(f"/api/blobs/{claimed}").status_code == 404
    assert http.head(f"/api/blobs/{actual}").status_code == 404
    leftovers = [p for p in store.rglob("*") if p.is_file() and "upload" in p.name]
    assert leftovers == []
    assert_json_error(http.post("/api/blobs/sha256:1234", content=data), 400)  # malformed digest


# ---------------------------------------------------------------- (f) disconnects


def wait_until_idle(client: httpx.Client, timeout: float = 5.0) -> dict:
    """Poll /health until no model has an active sequence (a server-side effect of a
    disconnect; bounded, no fixed sleep). Returns the last health answer."""
    deadline = time.monotonic() + timeout
    while True:
        health = client.get("/health").json()
        busy = [m for m in health["loaded_models"] if m["active_sequences"] or m["waiting"]]
        if not busy or time.monotonic() > deadline:
            return health


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/generate",
            {
                "model": GEMMA,
                "prompt": "Once upon a time",
                "raw": True,
                "options": {"num_predict": 200},
            },
        ),
        (
            "/v1/completions",
            {"model": GEMMA, "prompt": "Once upon a time", "stream": True, "max_tokens": 200},
        ),
    ],
)
def test_client_disconnect_mid_stream_frees_the_sequence(server: str, path: str, body: dict):
    with httpx.Client(base_url=server, timeout=60) as client:
        with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            lines = (line for line in response.iter_lines() if line.strip())  # SSE: blank lines
            received = [next(lines) for _ in range(2)]
            assert all(line.startswith(("{", "data: {")) for line in received), received
        health = wait_until_idle(client)
        assert all(m["active_sequences"] == 0 for m in health["loaded_models"]), health
        assert client.get("/").text == "Ollama is running"
        after = client.post(
            "/api/generate",
            json={
                "model": GEMMA,
                "prompt": "1, 2, 3,",
                "raw": True,
                "stream": False,
                "options": {"num_predict": 2},
            },
        )
        assert after.status_code == 200 and after.json()["done"]


# ---------------------------------------------------------------- bad values reaching the engine


@pytest.fixture
def private_model_server(model_store: Path, tmp_path: Path) -> Iterator[str]:
    """A server of its own over the shared models, for tests that may break a loaded model."""
    with run_power_server(private_store_copy(model_store, tmp_path)) as url:
        yield url


@pytest.mark.slow
def test_generate_context_out_of_vocabulary(private_model_server: str):
    with httpx.Client(base_url=private_model_server, timeout=60) as client:
        for context in ([999_999_999], [-5, 3], [2**40]):
            bad = client.post(
                "/api/generate",
                json={
                    "model": GEMMA,
                    "prompt": "hi",
                    "context": context,
                    "stream": False,
                    "options": {"num_predict": 1},
                },
            )
            assert_json_error(bad, 400)
        good = client.post(
            "/api/generate",
            json={"model": GEMMA, "prompt": "hi", "stream": False, "options": {"num_predict": 1}},
        )
        assert good.status_code == 200, good.text


@pytest.mark.slow
def test_huge_keep_alive_keeps_ps_working(private_model_server: str):
    with httpx.Client(base_url=private_model_server, timeout=60) as client:
        for keep_alive in (10**20, "99999999999999999999h"):
            embed = client.post(
                "/api/embed", json={"model": MINILM, "input": "hi", "keep_alive": keep_alive}
            )
            assert embed.status_code == 200, embed.text
            ps = client.get("/api/ps")
            assert ps.status_code == 200, ps.text
            (entry,) = ps.json()["models"]
            assert entry["expires_at"].startswith("9999-")


# ---------------------------------------------------------------- failing pulls


def test_pull_disconnect_mid_stream_keeps_serving(http: httpx.Client):
    unreachable = f"127.0.0.1:{free_port()}/library/nothing:latest"
    body = {"model": unreachable, "insecure": True}
    with http.stream("POST", "/api/pull", json=body) as response:
        assert response.status_code == 200
        first = json.loads(next(response.iter_lines()))
        assert "status" in first or "error" in first
    assert_serving(http)


@pytest.mark.slow
def test_pull_from_an_unreachable_registry_is_an_error_not_a_crash(http: httpx.Client):
    """The pull gives up after its retries (about 15 s): an error answer, then business as usual.
    (Ollama answers such a failure with a 500 when not streaming; a stream ends with an error line.)"""
    unreachable = f"127.0.0.1:{free_port()}/library/nothing:latest"
    answer = http.post("/api/pull", json={"model": unreachable, "insecure": True, "stream": False})
    assert answer.status_code in (500, 502), answer.text
    assert isinstance(answer.json()["error"], str)
    assert_serving(http)
    assert http.get("/api/tags").json() == {"models": []}


def test_a_blob_a_model_references_is_not_deleted(
    http: httpx.Client, empty_store_server: tuple[str, Path]
):
    _, store = empty_store_server
    data = b"a layer some model uses"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "uses-blob" / "latest"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": len(data)}
    config = {**layer, "mediaType": "application/vnd.docker.container.image.v1+json"}
    body = {"schemaVersion": 2, "config": config, "layers": [layer]}
    manifest.write_text(json.dumps(body))
    try:
        assert_json_error(http.delete(f"/api/blobs/{digest}"), 409)
        assert http.head(f"/api/blobs/{digest}").status_code == 200
    finally:
        manifest.unlink()
    assert http.delete(f"/api/blobs/{digest}").status_code == 200
    assert http.head(f"/api/blobs/{digest}").status_code == 404
