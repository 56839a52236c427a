"""The public Python client of a power (or Ollama) server: `Client` (sync) and `AsyncClient`.

Both speak the native HTTP API and hand back plain dicts parsed from its JSON. Streaming
routes (`generate`, `chat`, `pull`, `push`, `create` with `stream=True`) return an iterator
(an async iterator for `AsyncClient`) of the NDJSON objects as they arrive; stopping the
iteration early closes the HTTP response, which makes the server cancel the request. An
`AsyncClient` stream that is abandoned half-way should be closed with `aclose()` (or wrapped
in `contextlib.aclosing`) so that the connection is released at once.

Errors:
- a response with status >= 400, or an `{"error": ...}` line inside a stream, raises
  `ResponseError(message, status_code)`;
- a server that cannot be reached raises `ServerNotRunningError`, a `ConnectionError`
  whose message says how to start one.

The server address comes from `POWER_HOST`, then `OLLAMA_HOST` (see `parse_host`); a
`POWER_API_KEY` in the environment is sent as a Bearer token. `AsyncClient` is built on
httpx/anyio, so it runs under trio as well as asyncio.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from power.version import __version__

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_PORT = 11434
BLOB_CHUNK_SIZE = 1 << 20

#: Called while a blob uploads with (bytes sent so far, total bytes).
ProgressCallback = Callable[[int, int], None]


class ResponseError(Exception):
    """The server answered with an error (an HTTP status >= 400 or an error line in a stream).

    `error` is the server's message, `status_code` the HTTP status (-1 when unknown).
    """

    def __init__(self, message: str, status_code: int = -1) -> None:
        super().__init__(message)
        self.error = message
        self.status_code = status_code

    def __str__(self) -> str:
        return self.error


class ServerNotRunningError(ConnectionError):
    """No server answers at `base_url`; the message tells the user how to start one."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        super().__init__(
            f"could not connect to power server at {base_url}, is it running? "
            "Start it with 'power serve'"
        )


# ---------------------------------------------------------------- addresses


def parse_host(value: str | None) -> str:
    """Turn an `OLLAMA_HOST`-style value into a base URL, Ollama's way.

    The scheme is optional (http); without a port, a bare host gets 11434 while an explicit
    `http://` gets 80 and `https://` 443. An unspecified bind address (`0.0.0.0`, `::`) becomes
    the loopback address, since a server bound there is reached through loopback. A path is
    kept without its trailing slash. None or "" gives `http://127.0.0.1:11434`.
    """
    text = (value or "").strip()
    scheme, sep, rest = text.partition("://")
    default_port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport, _, path = rest.partition("/")
    host, port = _split_host_port(hostport)
    if not host or host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    try:
        port_number = int(port) if port else default_port
        if not 0 <= port_number <= 65535:
            raise ValueError
    except ValueError:
        port_number = default_port
    url = f"{scheme}://{host}:{port_number}"
    path = path.strip("/")
    return f"{url}/{path}" if path else url


def _split_host_port(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        return host, tail[1:] if tail.startswith(":") else ""
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        return host, port
    return hostport, ""  # a bare IPv6 address or no port


def host_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """The base URL named by `POWER_HOST`, else `OLLAMA_HOST`, else the default."""
    env = os.environ if environ is None else environ
    return parse_host(env.get("POWER_HOST") or env.get("OLLAMA_HOST"))


def _default_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    headers = {
        "Accept": "application/json",
        "User-Agent": f"power/{__version__} (python)",
    }
    api_key = env.get("POWER_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# ---------------------------------------------------------------- request bodies


def _body(**fields: Any) -> dict[str, Any]:
    """A request body without the fields left at None (the server applies its defaults)."""
    return {key: value for key, value in fields.items() if value is not None}


def _error_message(response: httpx.Response) -> str:
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip() or response.reason_phrase or f"status {response.status_code}"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # the OpenAI-style error object
            error = error.get("message")
        if error:
            return str(error)
    return text.strip()


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise ResponseError(_error_message(response), response.status_code)


def _parse_line(line: str, status_code: int) -> dict[str, Any] | None:
    """One NDJSON line as a dict; None for a blank line; an error line raises ResponseError."""
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ResponseError(f"invalid JSON line in response: {line[:200]!r}", status_code) from exc
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        if isinstance(error, dict):
            error = error.get("message", error)
        raise ResponseError(str(error), status_code)
    return data


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    if not response.content.strip():
        return {}
    return response.json()


def _blob_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(BLOB_CHUNK_SIZE):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _generate_body(
    model: str,
    prompt: str,
    stream: bool,
    fields: dict[str, Any],
) -> dict[str, Any]:
    return _body(model=model, prompt=prompt, stream=stream, **fields)


def _messages_list(messages: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [dict(message) for message in messages or ()]


def _create_body(model: str, stream: bool, fields: dict[str, Any]) -> dict[str, Any]:
    if "from_" in fields:
        fields["from"] = fields.pop("from_")
    return _body(model=model, stream=stream, **fields)


# ---------------------------------------------------------------- sync client


def _http_settings(
    host: str | None, timeout: float | httpx.Timeout | None, headers: Mapping[str, str] | None
) -> tuple[str, dict[str, Any]]:
    """The base URL and the httpx keyword arguments both clients are built with."""
    base_url = parse_host(host) if host else host_from_environment()
    merged = _default_headers()
    merged.update(headers or {})
    timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
    return base_url, {"base_url": base_url, "headers": merged, "timeout": timeout}


class Client:
    """A synchronous client; one `httpx.Client` (a connection pool) per instance.

    `host` overrides the environment; `transport` lets tests plug in `httpx.MockTransport`.
    Use it as a context manager or call `close()`.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, settings = _http_settings(host, timeout, headers)
        self._http = httpx.Client(**settings, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ServerNotRunningError(self.base_url) from exc
        _raise_for_status(response)
        return response

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response)
                for line in response.iter_lines():
                    data = _parse_line(line, response.status_code)
                    if data is not None:
                        yield data
        except httpx.ConnectError as exc:
            raise ServerNotRunningError(self.base_url) from exc

    def _post(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        if stream:
            return self._stream(path, body)
        return _json_or_empty(self._request("POST", path, json=body))

    # -- generation

    def generate(self, model: str, prompt: str = "", *, stream: bool = False, **fields: Any) -> Any:
        """POST /api/generate. `fields`: suffix, system, template, context, raw, format,
        images, options, keep_alive, think, logprobs, top_logprobs, ... (None = leave out).
        Returns the response dict, or an iterator of chunks when `stream`."""
        return self._post("/api/generate", _generate_body(model, prompt, stream, fields), stream)

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        stream: bool = False,
        **fields: Any,
    ) -> Any:
        """POST /api/chat. `fields`: tools, format, options, keep_alive, think, ...
        Returns the response dict, or an iterator of chunks when `stream`."""
        body = _body(model=model, messages=_messages_list(messages), stream=stream, **fields)
        return self._post("/api/chat", body, stream)

    def stream_text(self, model: str, prompt: str, **options: Any) -> Iterator[str]:
        """The generated text of `prompt`, piece by piece as the model produces it.
        Keyword arguments are generation options (temperature=0, num_predict=32, ...)."""
        body = _body(model=model, prompt=prompt, stream=True, options=options or None)
        for chunk in self._stream("/api/generate", body):
            if chunk.get("response"):
                yield chunk["response"]

    def embed(self, model: str, input: str | Sequence[str] = "", **fields: Any) -> dict[str, Any]:
        """POST /api/embed. `fields`: truncate, dimensions, options, keep_alive."""
        body = _body(model=model, input=input if isinstance(input, str) else list(input), **fields)
        return self._post("/api/embed", body, False)

    def embeddings(self, model: str, prompt: str = "", **fields: Any) -> dict[str, Any]:
        """POST /api/embeddings (the legacy single-vector route)."""
        return self._post("/api/embeddings", _body(model=model, prompt=prompt, **fields), False)

    # -- models

    def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        """POST /api/pull; progress dicts when `stream`, else the final status dict."""
        return self._post("/api/pull", _body(model=model, insecure=insecure, stream=stream), stream)

    def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        """POST /api/push; progress dicts when `stream`, else the final status dict."""
        return self._post("/api/push", _body(model=model, insecure=insecure, stream=stream), stream)

    def create(self, model: str, *, stream: bool = False, **fields: Any) -> Any:
        """POST /api/create. `fields`: from_ (or **{"from": ...}), files, adapters, template,
        system, license, parameters, messages, quantize."""
        return self._post("/api/create", _create_body(model, stream, fields), stream)

    def create_blob(
        self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> str:
        """Upload a file as a blob unless the server has it already; returns `sha256:<hex>`.
        `progress(sent, total)` is called as the bytes go out."""
        file_path = Path(path)
        digest = _blob_digest(file_path)
        total = file_path.stat().st_size
        try:
            self._request("HEAD", f"/api/blobs/{digest}")
        except ResponseError as exc:
            if exc.status_code != 404:
                raise
        else:
            if progress:
                progress(total, total)
            return digest

        def chunks() -> Iterator[bytes]:
            sent = 0
            with file_path.open("rb") as file:
                while chunk := file.read(BLOB_CHUNK_SIZE):
                    sent += len(chunk)
                    yield chunk
                    if progress:
                        progress(sent, total)

        self._request(
            "POST",
            f"/api/blobs/{digest}",
            content=chunks(),
            headers={"Content-Length": str(total)},
        )
        return digest

    def list(self) -> dict[str, Any]:
        """GET /api/tags: `{"models": [...]}`."""
        return self._request("GET", "/api/tags").json()

    def show(self, model: str, *, verbose: bool = False, **fields: Any) -> dict[str, Any]:
        """POST /api/show."""
        return self._post("/api/show", _body(model=model, verbose=verbose or None, **fields), False)

    def ps(self) -> dict[str, Any]:
        """GET /api/ps: `{"models": [...]}` (the loaded ones)."""
        return self._request("GET", "/api/ps").json()

    def copy(self, source: str, destination: str) -> dict[str, Any]:
        """POST /api/copy."""
        return self._post("/api/copy", {"source": source, "destination": destination}, False)

    def delete(self, model: str) -> dict[str, Any]:
        """DELETE /api/delete."""
        response = self._request("DELETE", "/api/delete", json={"model": model})
        return _json_or_empty(response)

    def version(self) -> str:
        """The server's version string (GET /api/version)."""
        return self._request("GET", "/api/version").json().get("version", "")


# ---------------------------------------------------------------- async client


class AsyncClient:
    """The asynchronous twin of `Client` (same methods, awaited; streams are async iterators).

    Built on `httpx.AsyncClient`, so it works under trio and asyncio alike.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, settings = _http_settings(host, timeout, headers)
        self._http = httpx.AsyncClient(**settings, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ServerNotRunningError(self.base_url) from exc
        _raise_for_status(response)
        return response

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_status(response)
                async for line in response.aiter_lines():
                    data = _parse_line(line, response.status_code)
                    if data is not None:
                        yield data
        except httpx.ConnectError as exc:
            raise ServerNotRunningError(self.base_url) from exc

    async def _post(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        if stream:
            return self._stream(path, body)
        return _json_or_empty(await self._request("POST", path, json=body))

    # -- generation

    async def generate(
        self, model: str, prompt: str = "", *, stream: bool = False, **fields: Any
    ) -> Any:
        """See `Client.generate`; with `stream`, an async iterator of chunks."""
        return await self._post(
            "/api/generate", _generate_body(model, prompt, stream, fields), stream
        )

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        stream: bool = False,
        **fields: Any,
    ) -> Any:
        """See `Client.chat`; with `stream`, an async iterator of chunks."""
        body = _body(model=model, messages=_messages_list(messages), stream=stream, **fields)
        return await self._post("/api/chat", body, stream)

    async def stream_text(self, model: str, prompt: str, **options: Any) -> AsyncIterator[str]:
        """The generated text of `prompt` as an async iterator of pieces, for callers that
        want each token as soon as it exists. Keyword arguments are generation options."""
        body = _body(model=model, prompt=prompt, stream=True, options=options or None)
        chunks = self._stream("/api/generate", body)
        try:
            async for chunk in chunks:
                if chunk.get("response"):
                    yield chunk["response"]
        finally:
            await chunks.aclose()

    async def embed(
        self, model: str, input: str | Sequence[str] = "", **fields: Any
    ) -> dict[str, Any]:
        body = _body(model=model, input=input if isinstance(input, str) else list(input), **fields)
        return await self._post("/api/embed", body, False)

    async def embeddings(self, model: str, prompt: str = "", **fields: Any) -> dict[str, Any]:
        body = _body(model=model, prompt=prompt, **fields)
        return await self._post("/api/embeddings", body, False)

    # -- models

    async def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        body = _body(model=model, insecure=insecure, stream=stream)
        return await self._post("/api/pull", body, stream)

    async def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        body = _body(model=model, insecure=insecure, stream=stream)
        return await self._post("/api/push", body, stream)

    async def create(self, model: str, *, stream: bool = False, **fields: Any) -> Any:
        return await self._post("/api/create", _create_body(model, stream, fields), stream)

    async def create_blob(
        self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> str:
        """See `Client.create_blob`; hashing and reading run in worker threads."""
        file_path = Path(path)
        digest = await anyio.to_thread.run_sync(_blob_digest, file_path)
        total = file_path.stat().st_size
        try:
            await self._request("HEAD", f"/api/blobs/{digest}")
        except ResponseError as exc:
            if exc.status_code != 404:
                raise
        else:
            if progress:
                progress(total, total)
            return digest

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            with file_path.open("rb") as file:
                while chunk := await anyio.to_thread.run_sync(file.read, BLOB_CHUNK_SIZE):
                    sent += len(chunk)
                    yield chunk
                    if progress:
                        progress(sent, total)

        await self._request(
            "POST",
            f"/api/blobs/{digest}",
            content=chunks(),
            headers={"Content-Length": str(total)},
        )
        return digest

    async def list(self) -> dict[str, Any]:
        return (await self._request("GET", "/api/tags")).json()

    async def show(self, model: str, *, verbose: bool = False, **fields: Any) -> dict[str, Any]:
        body = _body(model=model, verbose=verbose or None, **fields)
        return await self._post("/api/show", body, False)

    async def ps(self) -> dict[str, Any]:
        return (await self._request("GET", "/api/ps")).json()

    async def copy(self, source: str, destination: str) -> dict[str, Any]:
        return await self._post("/api/copy", {"source": source, "destination": destination}, False)

    async def delete(self, model: str) -> dict[str, Any]:
        response = await self._request("DELETE", "/api/delete", json={"model": model})
        return _json_or_empty(response)

    async def version(self) -> str:
        return (await self._request("GET", "/api/version")).json().get("version", "")
