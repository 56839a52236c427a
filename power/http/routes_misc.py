"""`/`, `/api/version`, `/api/status`, `/health`, `/metrics`, `/v1/usage`."""

from __future__ import annotations

import time

from quart import Blueprint, Response, jsonify

from power.http.state import get_state
from power.version import __version__

blueprint = Blueprint("misc", __name__)


@blueprint.route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return Response("Ollama is running", mimetype="text/plain")


@blueprint.route("/api/version", methods=["GET", "HEAD"])
async def version() -> Response:
    return jsonify({"version": __version__})


@blueprint.route("/api/status", methods=["GET"])
async def status() -> Response:
    """Ollama's `/api/status` (`{"cloud": {"disabled", "source"}}`). power runs no cloud
    models, so cloud is always disabled; `source` says "env" when `NO_CLOUD` is set as it is
    for Ollama, else "none" (nothing the user set disabled it)."""
    source = "env" if get_state().settings.no_cloud_env else "none"
    return jsonify({"cloud": {"disabled": True, "source": source}})


@blueprint.route("/health", methods=["GET", "HEAD"])
async def health() -> Response:
    state = get_state()
    manager = state.manager
    return jsonify(
        {
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.time() - state.metrics.started, 3),
            "loaded_models": [
                {
                    "name": inst.name,
                    "active_sequences": inst.loaded.n_active if inst.loaded else 0,
                    "waiting": inst.loaded.n_waiting if inst.loaded else 0,
                    "references": inst.refs,
                    "devices": [d.to_json() for d in inst.loaded.placement()]
                    if inst.loaded
                    else [],
                }
                for inst in manager.running()
            ],
            "queue": {"depth": manager.n_queued, "max": manager.max_queue},
        }
    )


@blueprint.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    state = get_state()
    manager = state.manager

    def refresh() -> None:
        state.metrics.loaded_models.set(len(manager.running()))
        state.metrics.queue_depth.set(manager.n_queued)
        state.metrics.active_sequences.set(
            sum(inst.loaded.n_active for inst in manager.running() if inst.loaded)
        )
        if manager.prompt_cache is not None:
            state.metrics.prompt_cache_bytes.set(manager.prompt_cache.n_bytes)

    body = state.metrics.render(refresh)
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")


@blueprint.route("/v1/usage", methods=["GET"])
async def usage() -> Response:
    state = get_state()
    models = [
        {
            "model": name,
            "requests": u.requests,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }
        for name, u in sorted(state.metrics.usage.items())
    ]
    return jsonify(
        {
            "object": "usage",
            "since": int(state.metrics.started),
            "models": models,
            "total_tokens": sum(m["total_tokens"] for m in models),
        }
    )
