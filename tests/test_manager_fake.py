"""The model manager's lifecycle edges on a fake backend: loads held at a gate, a mock clock.

Loads run on the trio thread behind `tests.fake_backend.Worker` gates (function `open_sync`),
keep_alive timers run on `trio.testing.MockClock(autojump_threshold=0)` (pytest-trio's
`autojump_clock` fixture): a 5-minute keep_alive passes as soon as every task is blocked.
No test sleeps to wait for something to happen.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import pytest
import trio
import trio.testing

from power.engine.lifecycle import IllegalTransition
from power.engine.loadspec import LoadSpec
from power.engine.manager import BUSY_MESSAGE, Instance, InstanceState, ModelManager
from power.engine.types import ContextLost, EngineError, GenerationParams
from power.options import Options
from tests.fake_backend import BOS, FakeBackend, Worker

GIB = 2**30


def spec(name: str = "m", num_ctx: int = 64) -> LoadSpec:
    return LoadSpec(model_path=f"/fake/{name}.gguf", num_ctx=num_ctx, num_parallel=2)


class Harness:
    """A running manager on a fake backend, with a fake memory probe: 10 GiB minus what the
    live instances are estimated to use (4 GiB each unless `sizes` says otherwise)."""

    def __init__(self, nursery: trio.Nursery, **kwargs) -> None:
        self.backend = FakeBackend()
        self.worker = Worker()
        self.sizes: dict[str, int] = {}
        self.events: list[tuple[str, str]] = []
        kwargs.setdefault("memory_probe", self.free_memory)
        self.manager = ModelManager(
            backend=self.backend,
            run_sync=self.worker,
            estimator=lambda s: self.sizes.get(s.model_path, 4 * GIB),
            on_event=lambda kind, name: self.events.append((kind, name)),
            wall_clock=trio.current_time,
            **kwargs,
        )
        self.nursery = nursery

    def free_memory(self) -> int:
        return 10 * GIB - sum(i.estimated_bytes for i in self.manager.instances.values())

    async def request(
        self,
        name: str = "m",
        load: LoadSpec | None = None,
        *,
        keep_alive: float | None = None,
        hold: trio.Event | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Use a model (held until `hold` is set), inside a cancel scope handed to the caller."""
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with self.manager.use(name, load or spec(name), keep_alive=keep_alive) as model:
                if hold is not None:
                    await hold.wait()
                p = GenerationParams(prompt=(BOS, 2), options=Options(temperature=0, num_predict=2))
                async with contextlib.aclosing(model.generate(p)) as stream:
                    async for _ in stream:
                        pass

    def opened(self) -> int:
        return len(self.backend.opened)

    def closed_contexts(self) -> int:
        return sum(context.closed for _, _, context in self.backend.opened)


@contextlib.asynccontextmanager
async def harness(**kwargs):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, **kwargs)
        await nursery.start(h.manager.run)
        try:
            yield h
        finally:
            h.worker.release_all()  # a failed test must not leave an open held forever
            nursery.cancel_scope.cancel()


def instance(h: Harness, name: str = "m") -> Instance:
    return h.manager.instances[name]


# ---------------------------------------------------------------- loading


async def test_a_request_cancelled_while_loading_does_not_wedge_the_model(autojump_clock):
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        scope = await h.nursery.start(h.request)
        await gate.reached.wait()
        inst = instance(h)
        assert inst.state is InstanceState.LOADING and inst.refs == 1
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is InstanceState.LOADING and inst.refs == 0
        assert h.manager.n_pending == 0
        gate.release()
        await trio.testing.wait_all_tasks_blocked()
        # the abandoned load finished and idles with its keep_alive
        assert inst.state is InstanceState.READY and inst.refs == 0
        assert inst.deadline is not None and inst.expires_at is not None
        await h.request()  # served by that instance, no second load
        assert h.opened() == 1 and h.closed_contexts() == 0


async def test_a_load_abandoned_with_keep_alive_zero_is_cleaned_up():
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        scope = await h.nursery.start(functools.partial(h.request, keep_alive=0))
        await gate.reached.wait()
        inst = instance(h)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        gate.release()
        await inst.closed.wait()
        assert inst.state is InstanceState.CLOSED and h.manager.instances == {}
        assert h.closed_contexts() == 1 and h.backend.opened[0][1].closed


async def test_waiters_for_one_load_share_it():
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(h.request)
            await gate.reached.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert instance(h).refs == 3 and h.manager.n_pending == 3
            gate.release()
        assert h.opened() == 1 and h.manager.n_pending == 0


async def test_a_failed_load_answers_every_waiter_and_is_forgotten():
    async with harness() as h:
        h.backend.fail_open = RuntimeError("no such file")
        gate = h.worker.hold("open_sync")
        errors = []

        async def one():
            try:
                await h.request()
            except EngineError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(one)
            await gate.reached.wait()
            inst = instance(h)
            gate.release()
        assert errors == ["failed to load model 'm': no such file"] * 2
        assert inst.state is InstanceState.FAILED and h.manager.instances == {}
        h.backend.fail_open = None
        await h.request()  # a later request loads afresh
        assert h.opened() == 1


# ---------------------------------------------------------------- unloading


async def test_unload_of_an_abandoned_loading_model_waits_for_the_open_then_closes_it():
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        scope = await h.nursery.start(h.request)
        await gate.reached.wait()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        inst = instance(h)
        unloaded = []

        async def stop():
            unloaded.append(await h.manager.unload("m"))

        h.nursery.start_soon(stop)
        await trio.testing.wait_all_tasks_blocked()
        assert unloaded == [] and inst.unload_requested and inst.state is InstanceState.LOADING
        gate.release()
        await inst.closed.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert unloaded == [True] and inst.state is InstanceState.CLOSED  # never READY again
        assert h.closed_contexts() == 1 and h.manager.instances == {}


async def test_unload_of_a_loading_model_that_someone_waits_for_happens_after_its_use():
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        done = trio.Event()

        async def use():
            await h.request()
            done.set()

        h.nursery.start_soon(use)
        await gate.reached.wait()
        inst = instance(h)
        assert await h.manager.unload("m") is True  # in use: unload when idle
        assert inst.keep_alive == 0 and inst.state is InstanceState.LOADING
        gate.release()
        await done.wait()
        await inst.closed.wait()
        assert inst.state is InstanceState.CLOSED and h.closed_contexts() == 1


async def test_unload_all_during_a_load_refuses_the_waiter_and_frees_everything():
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        errors = []

        async def waiter():
            try:
                await h.request()
            except EngineError as exc:
                errors.append(exc)

        h.nursery.start_soon(waiter)
        await gate.reached.wait()
        inst = instance(h)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.manager.unload_all)
            await trio.testing.wait_all_tasks_blocked()
            gate.release()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is InstanceState.CLOSED and h.closed_contexts() == 1
        assert len(errors) == 1 and errors[0].status == 503


async def test_an_unload_whose_caller_is_cancelled_still_completes():
    async with harness() as h:
        gate = h.worker.hold("open_sync")
        scope = await h.nursery.start(h.request)
        await gate.reached.wait()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        inst = instance(h)
        with trio.CancelScope() as unload_scope:
            unload_scope.cancel()
            await h.manager.unload("m")  # asks, then its wait is cancelled
        assert unload_scope.cancelled_caught
        assert inst.unload_requested
        gate.release()
        await inst.closed.wait()
        assert h.closed_contexts() == 1


async def test_cancelling_the_manager_while_loading_frees_what_the_open_returns():
    async with trio.open_nursery() as outer:
        h = Harness(outer)
        gate = h.worker.hold("open_sync")
        manager_scope = trio.CancelScope()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            with manager_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(h.manager.run)
                    nursery.start_soon(h.request)
                    task_status.started()

        await outer.start(serve)
        await gate.reached.wait()
        manager_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert h.opened() == 0  # the open is still under way: shielded, not abandoned
        gate.release()
        await trio.testing.wait_all_tasks_blocked()
        assert h.opened() == 1 and h.closed_contexts() == 1
        assert h.manager.instances == {}


# ---------------------------------------------------------------- keep_alive (mock clock)


async def test_keep_alive_expires_after_the_model_goes_idle(autojump_clock):
    async with harness(default_keep_alive=300) as h:
        await h.request()
        inst = instance(h)
        t_idle = trio.current_time()
        assert inst.deadline == pytest.approx(t_idle + 300)
        await inst.closed.wait()
        assert trio.current_time() - t_idle == pytest.approx(300)
        assert ("expire", "m") in h.events and h.manager.instances == {}


async def test_the_keep_alive_timer_runs_only_while_idle(autojump_clock):
    async with harness(default_keep_alive=300) as h:
        hold = trio.Event()
        h.nursery.start_soon(lambda: h.request(hold=hold))
        await trio.testing.wait_all_tasks_blocked()
        inst = instance(h)
        await trio.sleep(1000)  # mock time passes while the model is in use
        assert inst.state is InstanceState.READY and inst.expires_at is None
        hold.set()
        await trio.testing.wait_all_tasks_blocked()
        t_idle = trio.current_time()
        await trio.sleep(299)
        await h.request()  # used again just before expiry: the timer starts over
        t_idle = trio.current_time()
        await inst.closed.wait()
        assert trio.current_time() - t_idle == pytest.approx(300)


async def test_keep_alive_negative_keeps_the_model_forever(autojump_clock):
    async with harness() as h:
        await h.request(keep_alive=float("inf"))
        await trio.sleep(10**6)
        assert instance(h).state is InstanceState.READY and instance(h).expires_at is None


# ---------------------------------------------------------------- room, eviction, queue


async def test_memory_pressure_evicts_the_idle_model_that_expires_first(autojump_clock):
    async with harness() as h:
        await h.request("a", keep_alive=100)
        await h.request("b", keep_alive=1000)
        assert h.free_memory() == 2 * GIB
        await h.request("c")  # needs 4 GiB: evicts a (expires first), not b
        assert set(h.manager.instances) == {"b", "c"}
        assert ("evict", "a") in h.events and ("evict", "b") not in h.events


async def test_a_model_that_can_never_fit_is_refused_without_evicting_anything():
    async with harness() as h:
        await h.request("a")
        h.sizes["/fake/huge.gguf"] = 20 * GIB
        with pytest.raises(EngineError, match="requires more system memory") as info:
            await h.request("huge")
        assert info.value.status == 500
        assert set(h.manager.instances) == {"a"} and h.events.count(("evict", "a")) == 0


async def test_max_loaded_evicts_an_idle_model():
    async with harness(max_loaded=1, memory_probe=lambda: 100 * GIB) as h:
        await h.request("a")
        await h.request("b")
        assert set(h.manager.instances) == {"b"} and h.closed_contexts() == 1


async def test_a_busy_model_is_waited_for_not_evicted():
    async with harness(max_loaded=1, memory_probe=lambda: 100 * GIB) as h:
        hold = trio.Event()
        h.nursery.start_soon(lambda: h.request("a", hold=hold))
        await trio.testing.wait_all_tasks_blocked()
        h.nursery.start_soon(h.request, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert set(h.manager.instances) == {"a"} and h.manager.n_pending == 1
        hold.set()
        await trio.testing.wait_all_tasks_blocked()
        assert set(h.manager.instances) == {"b"}


async def test_the_queue_bound_answers_503():
    async with harness(max_queue=2) as h:
        gate = h.worker.hold("open_sync")
        for _ in range(2):
            h.nursery.start_soon(h.request)
        await gate.reached.wait()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(EngineError) as info:
            await h.request()
        assert info.value.status == 503 and str(info.value) == BUSY_MESSAGE
        gate.release()
        await trio.testing.wait_all_tasks_blocked()
        assert h.manager.n_queued == 0
        await h.request()  # room again


async def test_changed_load_options_reload_once_the_old_instance_is_idle():
    async with harness() as h:
        hold = trio.Event()
        h.nursery.start_soon(lambda: h.request(load=spec(num_ctx=64), hold=hold))
        await trio.testing.wait_all_tasks_blocked()
        old = instance(h)
        h.nursery.start_soon(lambda: h.request(load=spec(num_ctx=128)))
        await trio.testing.wait_all_tasks_blocked()
        assert instance(h) is old and old.state is InstanceState.READY  # in use: waited for
        hold.set()
        await trio.testing.wait_all_tasks_blocked()
        new = instance(h)
        assert old.state is InstanceState.CLOSED and new is not old
        assert new.spec.num_ctx == 128 and new.loaded.n_ctx_seq == 128 and h.opened() == 2


async def test_a_failed_step_loop_is_forgotten_and_the_next_request_reloads():
    async with harness() as h:
        await h.request()
        inst = instance(h)
        inst.loaded.context.broken = True  # the KV cache is unusable from now on
        with pytest.raises(EngineError):
            await h.request()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is InstanceState.FAILED and inst.failure is not None
        assert h.closed_contexts() == 1
        await h.request()
        assert h.opened() == 2


async def test_a_lost_context_fails_the_instance_and_the_next_request_reloads():
    """A split model's worker died during a decode (ContextLost): that request fails with the
    reason, the instance is FAILED and forgotten, and the next request loads the model again."""
    async with harness() as h:
        await h.request()
        inst = instance(h)
        context = inst.loaded.context
        context.lose_decodes.add(context.n_decodes + 1)
        with pytest.raises(EngineError, match="model runner failed: scripted loss"):
            await h.request()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is InstanceState.FAILED and isinstance(inst.failure, ContextLost)
        assert h.manager.instances == {} and h.closed_contexts() == 1
        await h.request()
        assert h.opened() == 2 and instance(h).state is InstanceState.READY


def test_an_instance_refuses_an_illegal_transition():
    inst = Instance(name="m", spec=spec(), info={})
    inst._move(InstanceState.FAILED)
    with pytest.raises(IllegalTransition):
        inst._move(InstanceState.READY)
    assert inst.closed.is_set()


# ---------------------------------------------------------------- freeing a model


async def test_a_model_is_freed_in_a_worker_thread_not_on_the_trio_thread():
    """llama.cpp takes 0.1-0.3 s to free a model: on the trio thread that stalled every HTTP
    request. With trio's real worker threads, the fake records which thread closed it."""
    backend = FakeBackend()
    manager = ModelManager(backend=backend, estimator=lambda s: GIB, memory_probe=lambda: 10 * GIB)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        async with manager.use("m", spec()) as model:
            p = GenerationParams(prompt=(BOS, 2), options=Options(temperature=0, num_predict=2))
            assert await model.complete(p.prompt, p.options) == "3 4 "
        inst = manager.instances["m"]
        assert await manager.unload("m")
        assert inst.state is InstanceState.CLOSED and manager.instances == {}
        nursery.cancel_scope.cancel()
    _, vocabulary, context = backend.opened[0]
    assert context.closed and vocabulary.closed
    trio_thread = threading.get_ident()
    assert context.closed_in_thread not in (None, trio_thread)
    assert vocabulary.closed_in_thread == context.closed_in_thread


async def test_an_instance_is_closed_only_once_its_free_has_finished():
    """While the worker frees the model the instance is UNLOADING (no request takes it) and
    `closed` is not set; a request that arrives meanwhile loads the model anew afterwards."""
    async with harness() as h:
        await h.request()
        inst = instance(h)
        gate = h.worker.hold("close")
        h.nursery.start_soon(h.manager.unload, "m")
        with trio.fail_after(10):  # fails, rather than hangs, if the free is never reached
            await gate.reached.wait()
        assert inst.state is InstanceState.UNLOADING and not inst.closed.is_set()
        assert h.closed_contexts() == 0 and "m" in h.manager.instances
        h.nursery.start_soon(h.request)  # waits for the free, then loads anew
        await trio.testing.wait_all_tasks_blocked()
        assert h.opened() == 1
        gate.release()
        await inst.closed.wait()
        assert inst.state is InstanceState.CLOSED and h.closed_contexts() == 1
        await trio.testing.wait_all_tasks_blocked()
        assert h.opened() == 2 and h.worker.calls["close"] == 1


async def test_cancelling_the_manager_while_a_model_is_freed_finishes_the_free():
    async with trio.open_nursery() as outer:
        h = Harness(outer)
        manager_scope = trio.CancelScope()

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            with manager_scope:
                await h.manager.run(task_status=task_status)

        await outer.start(serve)
        await h.request()
        inst = instance(h)
        gate = h.worker.hold("close")
        outer.start_soon(h.manager.unload, "m")
        with trio.fail_after(10):  # fails, rather than hangs, if the free is never reached
            await gate.reached.wait()
        manager_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is InstanceState.UNLOADING and h.closed_contexts() == 0  # shielded
        gate.release()
        await inst.closed.wait()
        assert inst.state is InstanceState.CLOSED and h.closed_contexts() == 1


async def test_a_failed_instance_is_failed_only_once_its_free_has_finished():
    async with harness() as h:
        await h.request()
        inst = instance(h)
        gate = h.worker.hold("close")
        inst.loaded.context.broken = True
        with pytest.raises(EngineError):
            await h.request()
        with trio.fail_after(10):  # fails, rather than hangs, if the free is never reached
            await gate.reached.wait()
        assert inst.state is InstanceState.UNLOADING and not inst.closed.is_set()
        gate.release()
        await inst.closed.wait()
        assert inst.state is InstanceState.FAILED and h.closed_contexts() == 1
