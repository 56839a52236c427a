"""The model manager on the real gemma file: references, unload on idle, memory refusal."""

from __future__ import annotations

import pytest
import trio

from power.engine.manager import ModelManager
from power.engine.model import LoadSpec
from power.engine.types import EngineError

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
