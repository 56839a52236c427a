"""`create_app(state)`: the quart-trio application with every route group registered.

Cross-cutting rules live here: the DNS-rebinding guard (non-local Host headers are refused while
bound to loopback, as Ollama does), the optional API key, CORS (Ollama's default origins plus
`POWER_ORIGINS`/`OLLAMA_ORIGINS`), JSON error bodies for 404/405/413, request metrics, and
`RESPONSE_TIMEOUT = None` so that long generations are never cut.

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

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from power.engine.types import EngineError
from power.http import (
    routes_anthropic,
    routes_misc,
    routes_models,
    routes_native,
    routes_openai,
    routes_responses,
)
from power.http.schemas import RequestError
from power.http.state import ServerState, error_response

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024 * 1024

DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")


def _is_loopback_bind(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        return address.is_loopback or address.is_private or address.is_unspecified
    except ValueError:
        pass
    if host in ("localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def origin_allowed(origin: str, extra: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(origin, pattern) for pattern in DEFAULT_ORIGINS + extra)


def api_key_matches(key: str, headers) -> bool:
    """Whether a request carries `key` as `Authorization: Bearer KEY` (OpenAI, Ollama) or as
    `x-api-key: KEY` (Anthropic); compared in constant time."""
    expected = key.encode()
    bearer = headers.get("Authorization", "")
    if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].encode(), expected):
        return True
    return hmac.compare_digest(headers.get("x-api-key", "").encode(), expected)


def create_app(state: ServerState) -> QuartTrio:
    app = QuartTrio("power")
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
        if not request.path.startswith("/api/blobs/"):
            length = request.content_length
            if length is not None and length > MAX_JSON_BODY:
                return error_response(413, "request body too large")
            request.body._max_content_length = MAX_JSON_BODY  # chunked bodies too
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
        return None

    @app.after_request
    async def _after(response: Response) -> Response:
        if response.status_code >= 400 and response.status_code != 413:
            # Answering before the body has arrived leaves a kept-alive HTTP/1.1 connection
            # stuck in hypercorn: read what is left of it (bounded by the JSON limit) first.
            try:
                await request.get_data()
            except Exception:  # noqa: BLE001
                response.headers["Connection"] = "close"
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
        return error_response(exc.status, str(exc))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal error: {exc}")

    app.register_blueprint(routes_misc.blueprint)
    app.register_blueprint(routes_native.blueprint)
    app.register_blueprint(routes_models.blueprint)
    app.register_blueprint(routes_openai.blueprint)
    app.register_blueprint(routes_responses.blueprint)
    app.register_blueprint(routes_anthropic.blueprint)
    return app


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
