"""The server's shared state, as route handlers reach it, and the JSON error body.

`ServerState` is built once by `power.http.server.serve` and stored on the app by `create_app`;
a handler gets it with `get_state()`. Route modules import this module, never `app`: `app`
imports the route modules to register them, so the arrows point one way only.
"""

from __future__ import annotations

import attrs
from quart import Response, current_app, jsonify

from power.config import Settings
from power.engine.manager import ModelManager
from power.http.errors import public_message
from power.http.metrics import Metrics
from power.registry.resolve_cache import ResolveCache
from power.registry.store import Store


@attrs.define
class ServerState:
    """What every handler shares. The manager owns the loaded models; the store the files;
    `resolved` remembers resolved models per manifest file (`power.registry.resolve_cache`)."""

    settings: Settings
    store: Store
    manager: ModelManager
    metrics: Metrics
    resolved: ResolveCache = attrs.field(
        default=attrs.Factory(lambda self: ResolveCache(self.store), takes_self=True)
    )


def get_state() -> ServerState:
    """The state of the app serving the current request."""
    return current_app.extensions["power"]


def error_response(status: int, message: str) -> Response:
    """Ollama's error body: `{"error": message}` with `status` (server paths cut from it)."""
    response = jsonify({"error": public_message(message)})
    response.status_code = status
    return response
