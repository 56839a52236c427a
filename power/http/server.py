"""`power serve`: the model manager and hypercorn's trio worker in one nursery.

    trio.run(serve, Settings.from_env())

SIGINT/SIGTERM trigger a graceful shutdown: hypercorn stops accepting, gives in-flight streams
its graceful timeout, then the manager unloads every model (each runner finishes its current
decode before its C resources are freed).

Connections are served by `power.http.connections` (hypercorn's HTTP/1.1 machinery with header
and body timeouts, a cap on open connections and a lingering close); at start the soft limit
on open files is raised to the hard one, and the cap is kept below it.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import trio
from hypercorn.config import Config

from power.config import Settings
from power.engine.manager import ModelManager
from power.engine.promptcache import PromptCache
from power.http.app import create_app
from power.http.connections import ConnectionLimits, raise_open_files_limit
from power.http.connections import serve as serve_connections
from power.http.metrics import Metrics
from power.http.request_log import RequestLogMiddleware, start_request_log
from power.http.state import ServerState
from power.registry.store import Store

log = logging.getLogger("power.server")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = "-" if settings.debug else None
    config.errorlog = "-"
    config.graceful_timeout = 3.0
    config.keep_alive_timeout = settings.idle_timeout
    config.h11_max_incomplete_size = 64 * 1024  # the largest request head
    # hypercorn's backlog of 100: a longer accept queue only makes a new client wait behind
    # more of a flood's connections (measured: 2.4 s with 1024 against 0.2 s)
    return config


#: Files kept free for everything but connections (models, logs, the store, worker threads).
FILES_RESERVE = 256


def connection_limits(settings: Settings, open_files_limit: int) -> ConnectionLimits:
    """The connection cap and timeouts of `settings`, the cap kept below the open files limit."""
    max_connections = settings.max_connections
    room = max(16, open_files_limit - FILES_RESERVE)
    if max_connections > room:
        log.warning(
            "POWER_MAX_CONNECTIONS %d exceeds what %d open files allow: using %d",
            max_connections,
            open_files_limit,
            room,
        )
        max_connections = room
    return ConnectionLimits(
        max_connections=max_connections,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
    )


async def _shutdown_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received signal %s, shutting down", signal.Signals(signum).name)
            return


async def serve(settings: Settings, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the server until a signal (or cancellation); `task_status.started(urls)` when bound."""
    store = Store(settings.models, noprune=settings.noprune)
    settings.models.mkdir(parents=True, exist_ok=True)
    try:
        pruned = store.prune()
        if pruned:
            log.info("pruned %d unreferenced blobs", len(pruned))
    except OSError as exc:
        log.warning("could not prune the store: %s", exc)
    metrics = Metrics()
    prompt_cache = PromptCache(
        settings.prompt_cache_path,
        max_bytes=settings.prompt_cache_size,
        min_tokens=settings.prompt_cache_min_tokens,
        on_event=metrics.prompt_cache_event,
    )
    await prompt_cache.open()  # indexes the folder in a worker thread
    manager = ModelManager(
        max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue,
        default_keep_alive=settings.keep_alive,
        on_event=metrics.model_event,
        prompt_cache=prompt_cache,
    )
    state = ServerState(settings=settings, store=store, manager=manager, metrics=metrics)
    app = create_app(state)
    served = RequestLogMiddleware(app) if settings.request_log else app
    stop_request_log = start_request_log() if settings.request_log else None
    limits = connection_limits(settings, raise_open_files_limit())
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            await serve_connections(
                served,
                hypercorn_config(settings),
                limits,
                shutdown_trigger=_shutdown_on_signal,
                task_status=task_status,
            )
        finally:
            with trio.CancelScope(shield=True):
                await manager.unload_all()
            nursery.cancel_scope.cancel()
            if stop_request_log is not None:
                stop_request_log()


#: The decode's worker thread must not wait for the GIL: it needs it for a moment between two
#: decodes (sampling, the next batch) while the trio thread formats and writes the chunks of
#: the step before. CPython lets a waiting thread force a switch only after the switch
#: interval (5 ms by default), and a step of a small model takes 10-100 ms. At 0.5 ms,
#: bench/http_server.py measured 0.971 (1 client) and 0.990 (8) of the bare loop, against
#: 0.936 and 0.950 at 5 ms, same run.
GIL_SWITCH_INTERVAL = 0.0005


def serve_main() -> int:
    settings = Settings.from_env()
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info(
        "power listening on %s:%d (store %s, %d parallel sequences per model)",
        settings.host,
        settings.port,
        settings.models,
        settings.num_parallel,
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        trio.run(serve, settings)
    except KeyboardInterrupt:
        pass
    return 0
