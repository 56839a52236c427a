"""The model manager on the real gemma file: references, unload on idle, memory refusal."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from power.engine.manager import ModelManager
from power.engine.model import LoadSpec
from power.engine.types import EngineError
from power.options import Options

pytestmark = pytest.mark.slow


def spec(path, num_ctx: int = 256) -> LoadSpec:
    return LoadSpec(model_path=str(path), num_ctx=num_ctx, num_parallel=2, num_thread=2)


async def test_references_keep_alive_zero_and_reuse(gemma_gguf):
    manager = ModelManager(default_keep_alive=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        async with (
            manager.use("gemma", spec(gemma_gguf)) as first,
            manager.use("gemma", spec(gemma_gguf)) as second,
        ):
            assert first is second
            assert manager.instances["gemma"].refs == 2
        instance = manager.instances["gemma"]
        assert instance.refs == 0 and instance.expires_at is not None
        async with manager.use("gemma", spec(gemma_gguf), keep_alive=0):
            pass
        await instance.stopped.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert "gemma" not in manager.instances
        nursery.cancel_scope.cancel()


async def test_a_model_that_cannot_fit_is_refused_with_a_clear_error(gemma_gguf):
    manager = ModelManager(memory_probe=lambda: 100 * 2**20)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with pytest.raises(EngineError) as info:
            async with manager.use("gemma", spec(gemma_gguf)):
                pass
        assert "requires more system memory" in str(info.value)
        assert manager.instances == {}
        nursery.cancel_scope.cancel()


async def test_a_different_load_option_reloads_when_idle(gemma_gguf):
    manager = ModelManager()
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        async with manager.use("gemma", spec(gemma_gguf, 256)) as small:
            assert small.n_ctx_seq == 256
        async with manager.use("gemma", spec(gemma_gguf, 512)) as large:
            assert large.n_ctx_seq == 512 and large is not small
        nursery.cancel_scope.cancel()


async def test_a_request_cancelled_while_loading_leaves_a_usable_model(gemma_gguf):
    """The load runs in the manager's task: a requester that goes away mid-load (a client
    disconnect) no longer wedges the model; the next request gets the loaded instance."""
    events: list[tuple[str, str]] = []
    manager = ModelManager(default_keep_alive=60, on_event=lambda *e: events.append(e))
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        scope = trio.CancelScope()

        async def requester():
            with scope:
                async with manager.use("gemma", spec(gemma_gguf)):
                    await trio.sleep_forever()  # (only if the load beat the cancel)

        nursery.start_soon(requester)
        await trio.testing.wait_all_tasks_blocked()  # it waits; the open is in its thread
        assert manager.instances["gemma"].refs == 1
        scope.cancel()
        nursery.cancel_scope.deadline = trio.current_time() + 120  # a hang fails, not blocks
        async with manager.use("gemma", spec(gemma_gguf)) as model:
            text = await model.complete("1, 2, 3,", Options(num_predict=2, temperature=0))
        assert text and events.count(("load", "gemma")) == 1
        nursery.cancel_scope.deadline = float("inf")
        await manager.unload("gemma")
        assert manager.instances == {}
        nursery.cancel_scope.cancel()
