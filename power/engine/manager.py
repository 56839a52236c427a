"""The model manager: loads models on demand, counts references, expires and evicts them.

Instance lifecycle (`InstanceState`, checked by `Instance._move`)::

    LOADING --open succeeded--> READY --unload asked--> UNLOADING --freed--> CLOSED
       |                          |                       ^   |
       +--unload asked: done as soon as the open returns--+   +--freed, after a failure--> FAILED
       |                          +--step loop failed or context lost--^
       +--open failed--> FAILED

(While UNLOADING, the C resources are being freed in a worker thread; no request takes the
instance, and `closed` is set only once they are free.)

(A lost context: `ContextLost`, e.g. a split model whose RPC worker went away.)

- Each instance is owned by one task in the manager's nursery (`_instance_task`). It opens the
  model in a worker thread (shielded: an open that has started always completes, so what it
  returns is never lost), runs the step loop under the instance's cancel scope, and in its
  `finally` frees the C resources in a worker thread too (`LoadedModel.aclose`: under the
  context's decode limiter, shielded, so a cancellation waits for the free to finish), then
  moves to CLOSED or FAILED and forgets the instance. Nothing else frees an instance. Freeing a
  model takes llama.cpp 0.1-0.3 s: on the trio thread it stalled every HTTP request as long.
- A request (`use`) holds a reference from the moment it finds or creates the instance, loading
  or not. Cancelling a request that waits only drops its reference: the load goes on in the
  manager's task. A load abandoned by all its requesters finishes and then idles with its
  keep_alive (or is unloaded at once with keep_alive 0); it is never left half-done.
- Unloading (`_begin_unload`) only asks: a READY instance's loop scope is cancelled (the worker
  thread finishes its current decode first); a LOADING one is marked, and its task closes it as
  soon as the open returns. Waiting for the end is waiting for the `closed` event.
- keep_alive timers run only while an instance is idle (no references), in trio's clock (a
  `MockClock` in tests); `expires_at` is the matching wall-clock time, for `/api/ps`.
- Eviction: when a new model does not fit (`max_loaded`, or the estimate of its memory above the
  available memory), the idle instance that expires soonest is unloaded, one at a time; a model
  that could not fit even if every loaded model were unloaded is refused at once (500), without
  evicting anything.

- Persistent prompt cache (`power.engine.promptcache`): with a `prompt_cache`, every model is
  loaded with it, and an instance whose loop stopped cleanly saves its slots' cells to it before
  its C resources are freed, for at most `cache_save_seconds` (an unload, an eviction, an expiry,
  the server's shutdown). A failed save is logged; it never fails the unload.

Every decision is made synchronously on the trio thread between awaits, so no lock is needed:
a waiting request re-examines the situation whenever anything changes (`_changed`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from power.engine.backend import Backend, WorkerRunner
from power.engine.lifecycle import check_transition
from power.engine.loadspec import LoadSpec, clamp_num_ctx, gguf_context_length
from power.engine.model import LoadedModel
from power.engine.promptcache import PromptCache
from power.engine.types import EngineError

log = logging.getLogger(__name__)

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class InstanceState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    CLOSED = "closed"
    FAILED = "failed"


_S = InstanceState
TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    _S.LOADING: frozenset({_S.READY, _S.UNLOADING, _S.FAILED}),
    _S.READY: frozenset({_S.UNLOADING, _S.FAILED}),
    _S.UNLOADING: frozenset({_S.CLOSED, _S.FAILED}),
}


@attrs.define(eq=False)
class Instance:
    """One model loaded (or loading) under one `LoadSpec`; see the module docstring."""

    name: str
    spec: LoadSpec
    info: dict[str, Any]
    state: InstanceState = InstanceState.LOADING
    loaded: LoadedModel | None = None
    refs: int = 0
    keep_alive: float = 300.0
    expires_at: float | None = None  # wall-clock seconds; None while in use or forever
    deadline: float | None = None  # the same moment in trio's clock
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # the step loop's
    timer: trio.CancelScope | None = None
    unload_requested: bool = False
    closed: trio.Event = attrs.field(factory=trio.Event)  # set in CLOSED or FAILED
    idle: trio.Event = attrs.field(factory=trio.Event)  # set when refs drop to 0
    load_error: BaseException | None = None
    failure: BaseException | None = None  # why the step loop stopped, if it failed
    estimated_bytes: int = 0

    def _move(self, to: InstanceState) -> None:
        check_transition(f"model instance {self.name!r}", TRANSITIONS, self.state, to)
        self.state = to
        if to in (InstanceState.CLOSED, InstanceState.FAILED):
            self.closed.set()

    @property
    def stopped(self) -> trio.Event:
        """The `closed` event (its former name)."""
        return self.closed


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or a large number."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def estimate_bytes(spec: LoadSpec) -> int:
    """A conservative estimate of what loading `spec` costs: weights plus KV cache plus slack.

    The context is counted as it will be loaded (clamped to the model's trained context)."""
    try:
        weights = Path(spec.model_path).stat().st_size
    except OSError:
        weights = 0
    projector = 0
    if spec.projector_path is not None:
        with contextlib.suppress(OSError):
            projector = Path(spec.projector_path).stat().st_size
    draft = 0  # a DRAFT model: its weights, and a KV cache like the model's (counted below)
    if spec.draft_path is not None:
        with contextlib.suppress(OSError):
            draft = Path(spec.draft_path).stat().st_size
    num_ctx = clamp_num_ctx(max(spec.num_ctx, 0), gguf_context_length(spec.model_path), quiet=True)
    # KV cache: without reading the file, assume ~ (weights / 1000) bytes per cell, bounded.
    per_cell = max(16 * 1024, min(weights // 2000, 512 * 1024))
    kv = per_cell * num_ctx * max(1, spec.num_parallel) // 8
    if draft:
        kv += (
            max(16 * 1024, min(draft // 2000, 512 * 1024))
            * num_ctx
            * max(1, spec.num_parallel)
            // 8
        )
    return weights + projector + draft + kv + 64 * 1024 * 1024


class ModelManager:
    """Hands out loaded models. Start with `nursery.start(manager.run)`.

    `backend` opens models (llama.cpp by default), `run_sync` runs blocking backend calls
    (`trio.to_thread.run_sync` by default), `wall_clock` dates `expires_at`; keep_alive timers use
    trio's clock. Tests inject all of them, and `memory_probe`/`estimator`."""

    def __init__(
        self,
        *,
        max_loaded: int = 3,
        max_queue: int = 512,
        default_keep_alive: float = 300.0,
        memory_probe: Callable[[], int] = available_memory,
        estimator: Callable[[LoadSpec], int] = estimate_bytes,
        on_event: Callable[[str, str], None] | None = None,
        backend: Backend | None = None,
        run_sync: WorkerRunner | None = None,
        wall_clock: Callable[[], float] = time.time,
        prompt_cache: PromptCache | None = None,
        cache_save_seconds: float = 5.0,
    ) -> None:
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.memory_probe = memory_probe
        self.estimator = estimator
        self.on_event = on_event or (lambda kind, name: None)
        self.backend = backend
        self.run_sync = run_sync
        self.wall_clock = wall_clock
        self.prompt_cache = prompt_cache
        self.cache_save_seconds = cache_save_seconds
        self.instances: dict[str, Instance] = {}
        self.n_pending = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the instances' tasks; cancelling this unloads everything (after any open in
        progress has returned)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # ------------------------------------------------------------------ public
    @property
    def n_queued(self) -> int:
        """Requests waiting for a model to load or for a free sequence."""
        waiting = sum(
            inst.loaded.n_waiting for inst in self.instances.values() if inst.loaded is not None
        )
        return self.n_pending + waiting

    def check_queue(self) -> None:
        if self.n_queued >= self.max_queue:
            raise EngineError(BUSY_MESSAGE, status=503)

    @contextlib.asynccontextmanager
    async def use(
        self,
        name: str,
        spec: LoadSpec,
        *,
        keep_alive: float | None = None,
        info: dict | None = None,
    ) -> AsyncIterator[LoadedModel]:
        """Hold a reference to `name` loaded per `spec` for the duration of the block.

        Loads it (evicting idle models if needed) or waits for it. Raises EngineError: 503 when
        the queue is full, 500 when the model cannot fit or fails to load. Cancellation while
        waiting drops the reference; the load itself goes on (see the module docstring)."""
        self.check_queue()
        instance = await self._acquire(name, spec, info or {}, keep_alive)
        try:
            assert instance.loaded is not None
            yield instance.loaded
        finally:
            self._release(instance)

    async def unload(self, name: str) -> bool:
        """Unload `name` as soon as it is idle (at once if it is, when its open returns if it
        is loading), and wait for that when it is idle. Returns whether it was loaded."""
        instance = self.instances.get(name)
        if instance is None:
            return False
        instance.keep_alive = 0
        if instance.refs == 0:
            self._begin_unload(instance)
            await instance.closed.wait()
        return True

    async def unload_all(self) -> None:
        """Unload every instance, in use or not (server shutdown), and wait until all closed."""
        instances = list(self.instances.values())
        for instance in instances:
            self._begin_unload(instance)
        for instance in instances:
            await instance.closed.wait()

    def running(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.state is InstanceState.READY]

    # ------------------------------------------------------------------ acquiring
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _acquire(
        self, name: str, spec: LoadSpec, info: dict, keep_alive: float | None
    ) -> Instance:
        instance = self.instances.get(name)
        if instance is not None and instance.spec == spec and instance.state is InstanceState.READY:
            self._take(instance, keep_alive)  # loaded already: no wait, never counted as pending
            return instance
        held: Instance | None = None  # the instance this request holds a reference on
        self.n_pending += 1
        try:
            while True:
                changed = self._changed  # any change after this point wakes us
                if held is not None:
                    if held.state is InstanceState.READY:
                        ready, held = held, None
                        return ready
                    if held.state is InstanceState.FAILED:
                        error = held.load_error
                        status = error.status if isinstance(error, EngineError) else 500
                        raise EngineError(f"failed to load model {name!r}: {error}", status=status)
                    if held.state is not InstanceState.LOADING or held.unload_requested:
                        raise EngineError(f"model {name!r} was unloaded while loading", status=503)
                    await changed.wait()
                    continue
                instance = self.instances.get(name)
                if instance is None:
                    room = self._make_room(spec)
                    if room is None:
                        held = self._start_load(name, spec, info, keep_alive)
                        continue
                    await room.wait()
                    continue
                if instance.spec == spec and not instance.unload_requested:
                    if instance.state in (InstanceState.LOADING, InstanceState.READY):
                        self._take(instance, keep_alive)
                        held = instance
                        continue
                elif instance.state is InstanceState.READY and instance.refs == 0:
                    # loaded with other load options and idle: reload
                    self._begin_unload(instance)
                await changed.wait()
        finally:
            self.n_pending -= 1
            if held is not None:  # cancelled or failed while waiting
                self._release(held)

    def _start_load(
        self, name: str, spec: LoadSpec, info: dict, keep_alive: float | None
    ) -> Instance:
        if self._nursery is None:
            raise EngineError("the model manager is not running")
        instance = Instance(name=name, spec=spec, info=info)
        instance.keep_alive = self.default_keep_alive
        instance.estimated_bytes = self.estimator(spec)
        self.instances[name] = instance
        self._take(instance, keep_alive)
        self._nursery.start_soon(self._instance_task, instance)
        self._notify()
        return instance

    def _make_room(self, spec: LoadSpec) -> trio.Event | None:
        """None when `spec` fits now; else starts one eviction if that can help and returns the
        event to wait for. Raises EngineError when it cannot fit even with nothing loaded."""
        needed = self.estimator(spec)
        available = self.memory_probe()
        live = list(self.instances.values())
        if len(live) < self.max_loaded and needed <= available:
            return None
        reclaimable = sum(i.estimated_bytes for i in live)
        if needed > available + reclaimable:
            raise EngineError(
                f"model requires more system memory ({needed / 2**30:.1f} GiB) than is "
                f"available ({available / 2**30:.1f} GiB)",
                status=500,
            )
        if any(i.state is InstanceState.UNLOADING or i.unload_requested for i in live):
            return self._changed  # memory is on its way back: look again then
        idle = [i for i in live if i.refs == 0 and i.state is InstanceState.READY]
        if idle:
            victim = min(idle, key=lambda i: i.deadline if i.deadline is not None else math.inf)
            log.info("evicting %s to make room", victim.name)
            self.on_event("evict", victim.name)
            self._begin_unload(victim)
        return self._changed

    # ------------------------------------------------------------------ the instance's task
    async def _instance_task(self, instance: Instance) -> None:
        """Open, serve, and finally free `instance` (its only owner)."""
        try:
            with trio.CancelScope(shield=True):
                loaded = await LoadedModel.open(
                    instance.spec,
                    backend=self.backend,
                    run_sync=self.run_sync,
                    prompt_cache=self.prompt_cache,
                )
        except Exception as exc:
            log.warning("failed to load model %r: %s", instance.name, exc)
            instance.load_error = exc
            instance._move(InstanceState.FAILED)
            self._forget(instance)
            return
        instance.loaded = loaded
        try:
            if instance.unload_requested:
                instance._move(InstanceState.UNLOADING)
                return
            instance._move(InstanceState.READY)
            self.on_event("load", instance.name)
            self._notify()
            if instance.refs == 0:
                self._became_idle(instance)  # abandoned while loading
            with instance.scope:
                await loaded.run()  # returns only when the model can serve no more
                instance.failure = loaded.failure
                if instance.failure is None:
                    await trio.sleep_forever()  # not expected: wait for an unload anyway
        finally:
            failed = instance.failure is not None and instance.state is InstanceState.READY
            if instance.state is InstanceState.READY:  # failed, or the manager was cancelled
                instance._move(InstanceState.UNLOADING)  # no request takes it from here on
                self._notify()
            if instance.failure is None:
                await loaded.save_prompt_cache(self.cache_save_seconds)  # shielded, bounded
            await loaded.aclose()  # in a worker thread, shielded: a cancellation waits for it
            if failed:
                instance._move(InstanceState.FAILED)  # the next request reloads it
            else:
                instance._move(InstanceState.CLOSED)
                self.on_event("unload", instance.name)
            self._forget(instance)

    def _begin_unload(self, instance: Instance) -> None:
        """Ask `instance` to unload (see the module docstring); returns at once."""
        if instance.state is InstanceState.LOADING:
            instance.unload_requested = True
        elif instance.state is InstanceState.READY:
            instance._move(InstanceState.UNLOADING)
            self._cancel_timer(instance)
            instance.scope.cancel()
        self._notify()

    def _forget(self, instance: Instance) -> None:
        if self.instances.get(instance.name) is instance:
            del self.instances[instance.name]
        self._cancel_timer(instance)
        self._notify()

    # ------------------------------------------------------------------ references, keep_alive
    def _take(self, instance: Instance, keep_alive: float | None) -> None:
        instance.refs += 1
        if keep_alive is not None:
            instance.keep_alive = keep_alive
        instance.expires_at = instance.deadline = None
        instance.idle = trio.Event()
        self._cancel_timer(instance)

    def _release(self, instance: Instance) -> None:
        instance.refs -= 1
        if instance.refs > 0:
            return
        instance.idle.set()
        self._notify()
        if instance.state is InstanceState.READY:
            self._became_idle(instance)

    def _became_idle(self, instance: Instance) -> None:
        """Start the keep_alive of a READY instance that nobody uses."""
        if instance.keep_alive <= 0 or self._nursery is None:
            self._begin_unload(instance)
        elif math.isfinite(instance.keep_alive):
            instance.deadline = trio.current_time() + instance.keep_alive
            instance.expires_at = self.wall_clock() + instance.keep_alive
            timer = instance.timer = trio.CancelScope()
            self._nursery.start_soon(self._expire, instance, timer, instance.deadline)

    def _cancel_timer(self, instance: Instance) -> None:
        if instance.timer is not None:
            instance.timer.cancel()
            instance.timer = None

    async def _expire(self, instance: Instance, timer: trio.CancelScope, deadline: float) -> None:
        with timer:  # cancelled by `_take` (even before this task starts) or by an unload
            await trio.sleep_until(deadline)
        if timer.cancel_called:
            return
        instance.timer = None
        if instance.refs == 0 and instance.state is InstanceState.READY:
            self.on_event("expire", instance.name)
            self._begin_unload(instance)
