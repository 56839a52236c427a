"""The model manager: loads models on demand, counts references, expires and evicts them.

Instance lifecycle::

    (absent) --load--> READY --refs drop to 0--> READY, idle with a deadline
                         ^  |                         |  (keep_alive elapsed, eviction,
                         |  +--------<--reuse---------+   or a reload with other options)
                         |                            v
                         +------------------------ UNLOADING --> (absent)

Each instance's step loop runs in the manager's nursery under its own cancel scope; unloading
cancels that scope (the worker thread finishes its current decode first), then frees the C
resources. The keep_alive timer runs only while an instance is idle (no references).
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

from power.engine.model import LoadedModel, LoadSpec
from power.engine.types import EngineError

log = logging.getLogger(__name__)

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class InstanceState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


@attrs.define(eq=False)
class Instance:
    name: str
    spec: LoadSpec
    info: dict[str, Any]
    state: InstanceState = InstanceState.LOADING
    loaded: LoadedModel | None = None
    refs: int = 0
    keep_alive: float = 300.0
    expires_at: float | None = None  # wall-clock seconds; None while in use or forever
    scope: trio.CancelScope | None = None
    timer: trio.CancelScope | None = None
    ready: trio.Event = attrs.field(factory=trio.Event)
    stopped: trio.Event = attrs.field(factory=trio.Event)
    idle: trio.Event = attrs.field(factory=trio.Event)
    load_error: BaseException | None = None
    idle_token: int = 0
    estimated_bytes: int = 0


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
    """A conservative estimate of what loading `spec` costs: weights plus KV cache plus slack."""
    try:
        weights = Path(spec.model_path).stat().st_size
    except OSError:
        weights = 0
    # KV cache: without reading the file, assume ~ (weights / 1000) bytes per cell, bounded.
    per_cell = max(16 * 1024, min(weights // 2000, 512 * 1024))
    kv = per_cell * spec.num_ctx * max(1, spec.num_parallel) // 8
    return weights + kv + 64 * 1024 * 1024


class ModelManager:
    """Hands out loaded models. Start with `nursery.start(manager.run)`."""

    def __init__(
        self,
        *,
        max_loaded: int = 3,
        max_queue: int = 512,
        default_keep_alive: float = 300.0,
        memory_probe: Callable[[], int] = available_memory,
        estimator: Callable[[LoadSpec], int] = estimate_bytes,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.memory_probe = memory_probe
        self.estimator = estimator
        self.on_event = on_event or (lambda kind, name: None)
        self.instances: dict[str, Instance] = {}
        self.n_pending = 0
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
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
        """Hold a reference to `name` loaded per `spec` for the duration of the block."""
        self.check_queue()
        instance = self.instances.get(name)
        if instance is not None and instance.spec == spec and instance.state is InstanceState.READY:
            self._take(instance)  # loaded already: no wait, so never counted as pending
        else:
            self.n_pending += 1
            try:
                instance = await self._acquire(name, spec, info or {})
            finally:
                self.n_pending -= 1
        if keep_alive is not None:
            instance.keep_alive = keep_alive
        try:
            assert instance.loaded is not None
            yield instance.loaded
        finally:
            self._release(instance)

    async def unload(self, name: str) -> bool:
        """Unload `name` as soon as it is idle (at once if it is). Returns whether it was loaded."""
        instance = self.instances.get(name)
        if instance is None:
            return False
        instance.keep_alive = 0
        if instance.refs == 0:
            await self._unload(instance)
        return True

    async def unload_all(self) -> None:
        for instance in list(self.instances.values()):
            await self._unload(instance)

    def running(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.state is InstanceState.READY]

    # ------------------------------------------------------------------ internals
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _acquire(self, name: str, spec: LoadSpec, info: dict) -> Instance:
        while True:
            async with self._lock:
                instance = self.instances.get(name)
                if instance is not None and instance.spec == spec:
                    if instance.state is InstanceState.READY:
                        self._take(instance)
                        return instance
                    if instance.state is InstanceState.LOADING:
                        wait_for = instance.ready
                    else:
                        wait_for = instance.stopped
                elif instance is not None:
                    # loaded with other load options: reload once it is idle
                    if instance.refs == 0 and instance.state is InstanceState.READY:
                        await self._unload(instance)
                        continue
                    wait_for = instance.idle if instance.refs else instance.stopped
                else:
                    freed = await self._make_room(spec)
                    if freed is None:
                        instance = Instance(name=name, spec=spec, info=info)
                        instance.keep_alive = self.default_keep_alive
                        instance.estimated_bytes = self.estimator(spec)
                        self.instances[name] = instance
                        wait_for = None
                    else:
                        wait_for = freed
            if wait_for is None:
                # load outside the lock: requests for other (loaded) models go on meanwhile
                await self._load(instance)
                self._take(instance)
                return instance
            await wait_for.wait()

    async def _make_room(self, spec: LoadSpec) -> trio.Event | None:
        """Evict idle instances until `spec` fits; None when it fits, else an event to wait for."""
        needed = self.estimator(spec)
        while True:
            too_many = len(self.instances) >= self.max_loaded
            too_big = needed > self.memory_probe()
            if not too_many and not too_big:
                return None
            idle = [
                i for i in self.instances.values() if i.refs == 0 and i.state is InstanceState.READY
            ]
            if idle:
                victim = min(
                    idle, key=lambda i: i.expires_at if i.expires_at is not None else math.inf
                )
                log.info("evicting %s to make room", victim.name)
                self.on_event("evict", victim.name)
                await self._unload(victim)
                continue
            if too_big and not self.instances:
                raise EngineError(
                    f"model requires more system memory ({needed / 2**30:.1f} GiB) than is "
                    f"available ({self.memory_probe() / 2**30:.1f} GiB)",
                    status=500,
                )
            return self._changed

    async def _load(self, instance: Instance) -> None:
        assert self._nursery is not None, "ModelManager.run is not running"
        try:
            instance.loaded = await LoadedModel.open(instance.spec)
        except BaseException as exc:
            instance.load_error = exc
            self.instances.pop(instance.name, None)
            instance.ready.set()
            instance.stopped.set()
            self._notify()
            if isinstance(exc, Exception):
                raise EngineError(f"failed to load model {instance.name!r}: {exc}") from exc
            raise
        await self._nursery.start(self._serve, instance)
        instance.state = InstanceState.READY
        instance.ready.set()
        self.on_event("load", instance.name)

    async def _serve(
        self, instance: Instance, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert instance.loaded is not None
        try:
            with trio.CancelScope() as scope:
                instance.scope = scope
                await instance.loaded.run(task_status=task_status)
                runner = instance.loaded.runner
                if runner is not None and runner.broken is not None:
                    # a failed loop: forget the instance so that the next request reloads it
                    instance.state = InstanceState.UNLOADING
                    if self.instances.get(instance.name) is instance:
                        del self.instances[instance.name]
                    self._notify()
                    return
                await trio.sleep_forever()  # embedding models have no loop; wait for unload
        finally:
            instance.loaded.close()
            instance.stopped.set()

    def _take(self, instance: Instance) -> None:
        instance.refs += 1
        instance.idle_token += 1
        instance.expires_at = None
        instance.idle = trio.Event()
        if instance.timer is not None:
            instance.timer.cancel()
            instance.timer = None

    def _release(self, instance: Instance) -> None:
        instance.refs -= 1
        if instance.refs > 0:
            return
        instance.idle.set()
        self._notify()
        if instance.state is not InstanceState.READY or self._nursery is None:
            return
        if instance.keep_alive <= 0:
            self._nursery.start_soon(self._unload, instance)
        elif math.isfinite(instance.keep_alive):
            instance.expires_at = time.time() + instance.keep_alive
            self._nursery.start_soon(
                self._expire, instance, instance.keep_alive, instance.idle_token
            )

    async def _expire(self, instance: Instance, delay: float, token: int) -> None:
        if instance.idle_token != token:
            return  # used again before this timer even started
        with trio.CancelScope() as timer:
            instance.timer = timer
            await trio.sleep(delay)
            if (
                instance.refs == 0
                and instance.idle_token == token
                and instance.state is InstanceState.READY
            ):
                self.on_event("expire", instance.name)
                await self._unload(instance)

    async def _unload(self, instance: Instance) -> None:
        if instance.state is InstanceState.UNLOADING:
            await instance.stopped.wait()
            return
        instance.state = InstanceState.UNLOADING
        if instance.timer is not None:
            instance.timer.cancel()
        if instance.scope is not None:
            instance.scope.cancel()
        with trio.CancelScope(shield=True):
            await instance.stopped.wait()
        if self.instances.get(instance.name) is instance:
            del self.instances[instance.name]
        self.on_event("unload", instance.name)
        self._notify()
