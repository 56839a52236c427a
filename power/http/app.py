"""`create_app(state)`: the quart-trio application with every route group registered.

Cross-cutting rules live here: the DNS-rebinding guard (non-local Host headers are refused while
bound to loopback, IPv4-mapped loopback binds included, as Ollama does), the optional API key
(compared in constant time), CORS (Ollama's default origins plus `POWER_ORIGINS`/
`OLLAMA_ORIGINS`), JSON error bodies for 404/405/413 and for every unexpected error (a generic
message with an id; the detail goes to the log), request metrics, and
`RESPONSE_TIMEOUT = None` so that long generations are never cut.

What a request costs before it is accepted: its body is never read into memory until the guards
have passed (`power.http.bodies`: at most `STREAM_BUFFER` bytes wait, then the client is made to
wait); JSON routes then buffer up to `MAX_JSON_BODY`. A response given before its request body
has arrived (any refusal, a 404, an existing blob) reads and discards at most `DRAIN_BYTES` more
of it to keep the connection alive, else answers `Connection: close` and the connection layer
(`power.http.connections`) closes it after the answer.

This is the top of `power.http`: it imports the route modules to register them; they reach the
shared state through `power.http.state`, never through this module.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
import socket
import time

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from power.config import is_loopback_address
from power.engine.types import EngineError
from power.http import (
    routes_anthropic,
    routes_misc,
    routes_models,
    routes_native,
    routes_openai,
    routes_responses,
)
from power.http.bodies import BoundedBody, BoundedHTTPConnection, PowerRequest
from power.http.errors import describe, internal_error
from power.http.schemas import RequestError
from power.http.state import ServerState, error_response
from power.options import OptionError
from power.registry.local_paths import LocalPathError

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024 * 1024

#: How much of an unread request body is read and dropped to keep its connection alive after
#: an early answer (Go's net/http reads 256 KiB), and for how long at most.
DRAIN_BYTES = 256 * 1024
DRAIN_SECONDS = 2.0

DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")


def _is_loopback_bind(host: str) -> bool:
    return host == "" or is_loopback_address(host)


def host_allowed(host_header: str) -> bool:
    """Ollama's rule for Host headers while bound to loopback."""
    if not host_header:
        return True
    host = host_header
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    try:
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or address.is_private or address.is_unspecified
    except ValueError:
        pass
    if host in ("localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def origin_allowed(origin: str, extra: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(origin, pattern) for pattern in DEFAULT_ORIGINS + extra)


def _header_bytes(value: str) -> bytes | None:
    """A header value as the client sent it (quart hands it over decoded as latin-1)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return None


def api_key_matches(key: str, headers) -> bool:
    """Whether a request carries `key` as `Authorization: Bearer KEY` (OpenAI, Ollama) or as
    `x-api-key: KEY` (Anthropic); compared in constant time."""
    expected = key.encode()
    bearer = _header_bytes(headers.get("Authorization", ""))
    if bearer is not None and hmac.compare_digest(bearer, b"Bearer " + expected):
        return True
    api_key = _header_bytes(headers.get("x-api-key", ""))
    return api_key is not None and hmac.compare_digest(api_key, expected)


class PowerApp(QuartTrio):
    """quart-trio with request bodies that cannot fill the memory (`power.http.bodies`)."""

    request_class = PowerRequest
    asgi_http_class = BoundedHTTPConnection


def create_app(state: ServerState) -> QuartTrio:
    app = PowerApp("power")
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None
    # Blob uploads stream to disk and may be gigabytes: the JSON limit is applied per route below.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.extensions["power"] = state
    guard_hosts = _is_loopback_bind(state.settings.host)

    @app.before_request
    async def _guards() -> Response | None:
        g.t_start = time.perf_counter()
        if guard_hosts and not host_allowed(request.host):
            return error_response(403, "forbidden: host not allowed")
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            response = Response("", status=204)
            if origin and origin_allowed(origin, state.settings.origins):
                _cors(response, origin)
            return response
        if origin and not origin_allowed(origin, state.settings.origins):
            return error_response(403, "forbidden: origin not allowed")
        key = state.settings.api_key
        if key and request.path != "/" and not api_key_matches(key, request.headers):
            message = "unauthorized: a valid API key is required"
            if request.path.startswith("/v1/messages"):
                return routes_anthropic.anthropic_error_response(401, message)
            return error_response(401, message)
        if request.url_rule is not None and not request.path.startswith("/api/blobs/"):
            # a JSON route: the whole body, up to the limit (only now: the guards passed)
            length = request.content_length
            if length is not None and length > MAX_JSON_BODY:
                return error_response(413, "request body too large")
            request.body.buffer_whole(MAX_JSON_BODY)
        return None

    @app.after_request
    async def _after(response: Response) -> Response:
        await _settle_body(response)
        origin = request.headers.get("Origin")
        if origin and origin_allowed(origin, state.settings.origins):
            _cors(response, origin)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        state.metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        t_start = getattr(g, "t_start", None)
        if t_start is not None:
            state.metrics.latency.labels(route=route).observe(time.perf_counter() - t_start)
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "404 page not found",
            405: "405 method not allowed",
            413: "request body too large",
        }
        return error_response(status, messages.get(status, exc.description or exc.name))

    @app.errorhandler(RequestError)
    async def _request_error(exc: RequestError) -> Response:
        return error_response(exc.status, exc.message)

    @app.errorhandler(EngineError)
    async def _engine_error(exc: EngineError) -> Response:
        return error_response(*describe(exc))

    @app.errorhandler(OptionError)
    async def _option_error(exc: OptionError) -> Response:
        return error_response(400, str(exc))

    @app.errorhandler(LocalPathError)
    async def _local_path_error(exc: LocalPathError) -> Response:
        return error_response(exc.status, str(exc))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        # the detail (an OSError names server paths) goes to the log, under the id we answer
        return error_response(500, internal_error(exc, f"{request.method} {request.path}"))

    app.register_blueprint(routes_misc.blueprint)
    app.register_blueprint(routes_native.blueprint)
    app.register_blueprint(routes_models.blueprint)
    app.register_blueprint(routes_openai.blueprint)
    app.register_blueprint(routes_responses.blueprint)
    app.register_blueprint(routes_anthropic.blueprint)
    return app


async def _settle_body(response: Response) -> None:
    """A response given before its request body arrived: read and drop a little more of it to
    keep the connection alive (HTTP/1.1 needs the whole request read before the next one),
    else close the connection after this answer. Nothing of it is kept in memory."""
    body = request.body
    if not isinstance(body, BoundedBody) or body.received_all:
        return
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    remaining = None if chunked else (request.content_length or 0) - body.n_received
    if remaining is not None and remaining <= DRAIN_BYTES:
        with trio.move_on_after(DRAIN_SECONDS):
            if await body.discard(DRAIN_BYTES):
                return
    if request.http_version.startswith("1"):
        response.headers["Connection"] = "close"


def _cors(response: Response, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Allow-Methods"] = (
        "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
    )
    response.headers["Access-Control-Allow-Headers"] = (
        "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, "
        "OpenAI-Beta, x-stainless-arch, x-stainless-os, x-stainless-package-version, "
        "x-stainless-runtime, x-stainless-runtime-version, x-stainless-lang, "
        "x-stainless-retry-count, x-stainless-async, x-stainless-helper-method, "
        "x-stainless-poll-helper, x-stainless-custom-poll-interval, x-stainless-timeout, "
        "x-api-key, anthropic-version, anthropic-beta, anthropic-dangerous-direct-browser-access"
    )
