"""power.client against an in-process fake server (httpx.MockTransport): host parsing, request
bodies, NDJSON streaming, error mapping, blob upload; and, when the real server works,
against `power serve`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from power.client import (
    AsyncClient,
    Client,
    ResponseError,
    ServerNotRunningError,
    host_from_environment,
    parse_host,
)

# ---------------------------------------------------------------- host parsing


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":56789", "http://127.0.0.1:56789"),
        ("1.2.3.4:56789", "http://1.2.3.4:56789"),
        ("http://1.2.3.4", "http://1.2.3.4:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:56789/path/", "https://example.com:56789/path"),
        ("example.com/", "http://example.com:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("[::]:8080", "http://127.0.0.1:8080"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("[2001:db8::1]", "http://[2001:db8::1]:11434"),
        ("localhost:99999", "http://localhost:11434"),
        ("  127.0.0.1:5000  ", "http://127.0.0.1:5000"),
    ],
)
def test_parse_host(value: str | None, expected: str) -> None:
    assert parse_host(value) == expected


def test_power_host_wins_over_ollama_host() -> None:
    env = {"POWER_HOST": "127.0.0.1:1234", "OLLAMA_HOST": "127.0.0.1:5678"}
    assert host_from_environment(env) == "http://127.0.0.1:1234"
    assert host_from_environment({"OLLAMA_HOST": "0.0.0.0:5678"}) == "http://127.0.0.1:5678"
    assert host_from_environment({}) == "http://127.0.0.1:11434"


# ---------------------------------------------------------------- a fake server


class FakeServer:
    """Records requests and answers them from `routes` (path -> function(request) -> Response)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.blobs: dict[str, bytes] = {}

    def bodies(self, path: str) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path and r.content]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/api/generate":
            body = json.loads(request.content)
            if body["model"] == "missing":
                return httpx.Response(404, json={"error": "model 'missing' not found"})
            if body.get("stream", True):
                lines = [
                    {"model": body["model"], "response": "Hel", "done": False},
                    {"model": body["model"], "response": "lo", "done": False},
                    {"model": body["model"], "response": "", "done": True, "eval_count": 2},
                ]
                if body["model"] == "broken":
                    lines = lines[:1] + [{"error": "the model crashed"}]
                text = "".join(json.dumps(line) + "\n" for line in lines)
                return httpx.Response(
                    200, text=text, headers={"content-type": "application/x-ndjson"}
                )
            return httpx.Response(200, json={"response": "Hello", "done": True})
        if path == "/api/chat":
            body = json.loads(request.content)
            return httpx.Response(
                200,
                json={
                    "message": {"role": "assistant", "content": f"{len(body['messages'])}"},
                    "done": True,
                },
            )
        if path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": "a:latest"}]})
        if path == "/api/version":
            return httpx.Response(200, json={"version": "9.9.9"})
        if path == "/api/delete":
            return httpx.Response(200)
        if path == "/api/copy":
            return httpx.Response(404, json={"error": "model 'x' not found"})
        if path == "/api/show":
            return httpx.Response(500, text="plain failure")
        if path.startswith("/api/blobs/"):
            digest = path.removeprefix("/api/blobs/")
            if request.method == "HEAD":
                return httpx.Response(200 if digest in self.blobs else 404)
            data = request.read()
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                return httpx.Response(400, json={"error": "digest mismatch"})
            self.blobs[digest] = data
            return httpx.Response(201)
        if path == "/api/pull":
            statuses = [{"status": "pulling manifest"}, {"status": "success"}]
            return httpx.Response(200, text="".join(json.dumps(s) + "\n" for s in statuses))
        return httpx.Response(404, text="404 page not found")


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(fake: FakeServer) -> Client:
    with Client("127.0.0.1:9", transport=httpx.MockTransport(fake.handler)) as c:
        yield c


def test_generate_stream_yields_parsed_chunks(client: Client, fake: FakeServer) -> None:
    chunks = list(client.generate("m", "hi", stream=True, options={"temperature": 0}))
    assert [c["response"] for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1]["done"] is True
    body = fake.bodies("/api/generate")[0]
    assert body == {"model": "m", "prompt": "hi", "stream": True, "options": {"temperature": 0}}


def test_none_fields_are_left_out(client: Client, fake: FakeServer) -> None:
    result = client.generate("m", "hi", system=None, format="json", keep_alive=0)
    assert result == {"response": "Hello", "done": True}
    assert fake.bodies("/api/generate")[0] == {
        "model": "m",
        "prompt": "hi",
        "stream": False,
        "format": "json",
        "keep_alive": 0,
    }


def test_stream_text(client: Client) -> None:
    assert list(client.stream_text("m", "hi", temperature=0)) == ["Hel", "lo"]


def test_error_line_inside_a_stream_raises(client: Client) -> None:
    chunks = client.generate("broken", "hi", stream=True)
    assert next(chunks)["response"] == "Hel"
    with pytest.raises(ResponseError) as info:
        next(chunks)
    assert str(info.value) == "the model crashed"
    assert info.value.status_code == 200


def test_error_status_raises_with_message_and_code(client: Client) -> None:
    with pytest.raises(ResponseError) as info:
        client.generate("missing", "hi")
    assert info.value.status_code == 404
    assert info.value.error == "model 'missing' not found"
    with pytest.raises(ResponseError) as info:
        list(client.generate("missing", "hi", stream=True))
    assert info.value.status_code == 404
    with pytest.raises(ResponseError, match="plain failure") as info:
        client.show("x")
    assert info.value.status_code == 500


def test_simple_routes(client: Client, fake: FakeServer) -> None:
    assert client.list() == {"models": [{"name": "a:latest"}]}
    assert client.version() == "9.9.9"
    assert client.delete("a") == {}
    delete = [r for r in fake.requests if r.url.path == "/api/delete"][0]
    assert delete.method == "DELETE" and json.loads(delete.content) == {"model": "a"}
    with pytest.raises(ResponseError, match="not found"):
        client.copy("x", "y")
    reply = client.chat("m", [{"role": "user", "content": "hi"}])
    assert reply["message"]["content"] == "1"


def test_create_sends_from_field(client: Client, fake: FakeServer) -> None:
    fake_create = []

    def handler(request: httpx.Request) -> httpx.Response:
        fake_create.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "success"})

    with Client("127.0.0.1:9", transport=httpx.MockTransport(handler)) as c:
        assert c.create("new", from_="base", system="be brief") == {"status": "success"}
    assert fake_create == [{"model": "new", "stream": False, "from": "base", "system": "be brief"}]


def test_pull_stream(client: Client) -> None:
    assert [c["status"] for c in client.pull("m", stream=True)] == ["pulling manifest", "success"]


def test_create_blob_uploads_once(client: Client, fake: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "weights.gguf"
    data = b"GGUF" + bytes(range(256)) * 5000
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    digest = client.create_blob(path, progress=lambda sent, total: seen.append((sent, total)))
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert fake.blobs[digest] == data
    assert seen[-1] == (len(data), len(data))
    posts = [r for r in fake.requests if r.method == "POST"]
    assert len(posts) == 1
    assert client.create_blob(path) == digest  # the HEAD finds it: no second upload
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


def test_api_key_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch, fake: FakeServer) -> None:
    monkeypatch.setenv("POWER_API_KEY", "secret")
    with Client("127.0.0.1:9", transport=httpx.MockTransport(fake.handler)) as c:
        c.version()
    assert fake.requests[-1].headers["authorization"] == "Bearer secret"


def test_server_not_running_is_a_connection_error() -> None:
    with socket_port() as port, Client(f"127.0.0.1:{port}") as c:
        with pytest.raises(ConnectionError) as info:
            c.list()
        assert isinstance(info.value, ServerNotRunningError)
        assert str(info.value) == (
            f"could not connect to power server at http://127.0.0.1:{port}, is it running? "
            "Start it with 'power serve'"
        )
        with pytest.raises(ServerNotRunningError):
            list(c.generate("m", "hi", stream=True))


class socket_port:
    """A loopback port that nothing listens on (bound, never listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# ---------------------------------------------------------------- async client under trio


async def test_async_client_streams_under_trio(fake: FakeServer, tmp_path: Path) -> None:
    transport = httpx.MockTransport(fake.handler)
    async with AsyncClient("127.0.0.1:9", transport=transport) as c:
        chunks = [chunk async for chunk in await c.generate("m", "hi", stream=True)]
        assert [chunk["response"] for chunk in chunks] == ["Hel", "lo", ""]
        assert [piece async for piece in c.stream_text("m", "hi")] == ["Hel", "lo"]
        assert await c.version() == "9.9.9"
        with pytest.raises(ResponseError) as info:
            await c.generate("missing", "hi")
        assert info.value.status_code == 404
        stream = await c.generate("broken", "hi", stream=True)
        with pytest.raises(ResponseError, match="crashed"):
            async for _ in stream:
                pass
        path = tmp_path / "blob.bin"
        path.write_bytes(b"x" * 3_000_000)
        digest = await c.create_blob(path)
        assert fake.blobs[digest] == b"x" * 3_000_000


async def test_async_client_not_running() -> None:
    with socket_port() as port:
        async with AsyncClient(f"127.0.0.1:{port}") as c:
            with pytest.raises(ServerNotRunningError):
                await c.ps()


# ---------------------------------------------------------------- against the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from conftest import run_power_server

    store = tmp_path_factory.mktemp("client-store") / "models"
    store.mkdir()
    with run_power_server(store) as url:
        yield url


@pytest.fixture(scope="module")
def model(server: str, gemma_gguf: Path) -> str:
    """gemma-3-270m created through the client: blob upload, then /api/create with `files`."""
    with Client(server) as c:
        digest = c.create_blob(gemma_gguf)
        statuses = [
            chunk["status"]
            for chunk in c.create(
                "client-gemma",
                files={gemma_gguf.name: digest},
                template="{{ .Prompt }}",
                parameters={"num_predict": 4},
                stream=True,
            )
        ]
        assert statuses[-1] == "success"
        assert c.create_blob(gemma_gguf) == digest  # already there: HEAD only
    return "client-gemma"


@pytest.mark.slow
def test_sync_client_end_to_end(server: str, model: str) -> None:
    with Client(server) as c:
        assert c.version()
        names = [m["name"] for m in c.list()["models"]]
        assert "client-gemma:latest" in names
        info = c.show(model)
        assert (
            info["details"]["quantization_level"] == "Q4_K_M"
            and "completion" in info["capabilities"]
        )
        reply = c.generate(model, "The sky is", options={"temperature": 0})
        assert reply["done"] is True and reply["eval_count"] <= 4
        chunks = list(c.generate(model, "The sky is", stream=True, options={"temperature": 0}))
        assert "".join(chunk["response"] for chunk in chunks) == reply["response"]
        assert chunks[-1]["done"] and chunks[-1]["total_duration"] > 0
        pieces = list(c.stream_text(model, "The sky is", temperature=0))
        assert "".join(pieces) == reply["response"]
        answer = c.chat(model, [{"role": "user", "content": "Hi"}], options={"num_predict": 2})
        assert answer["message"]["role"] == "assistant"
        assert any(m["name"].startswith("client-gemma") for m in c.ps()["models"])
        c.copy(model, "client-copy")
        c.delete("client-copy")
        with pytest.raises(ResponseError) as info:
            c.show("client-copy")
        assert info.value.status_code == 404 and "not found" in info.value.error
        with pytest.raises(ResponseError) as info:
            c.generate("bad name!", "hi")
        assert info.value.status_code == 400


@pytest.mark.slow
async def test_async_client_end_to_end_under_trio(server: str, model: str) -> None:
    async with AsyncClient(server) as c:
        assert await c.version()
        reply = await c.generate(model, "Once upon a time", options={"temperature": 0})
        pieces = [piece async for piece in c.stream_text(model, "Once upon a time", temperature=0)]
        assert "".join(pieces) == reply["response"]
        # stopping early closes the response; the server goes on serving
        stream = await c.generate(
            model, "Once upon a time", stream=True, options={"num_predict": 200}
        )
        async for chunk in stream:
            assert "response" in chunk
            break
        await stream.aclose()
        again = await c.chat(model, [{"role": "user", "content": "Hi"}], options={"num_predict": 2})
        assert again["done"] is True
        with pytest.raises(ResponseError) as info:
            await c.show("nope")
        assert info.value.status_code == 404
