"""The persistent prompt cache on the fake backend: saves, restores, misses, bounds, corruption.

Every file operation runs through `tests.fake_backend.Worker` (on the trio thread), so the tests
are deterministic and instant; a "restart" is a new `PromptCache` on the same folder and a new
model load. The fake's cells are checked against the scheduler's view after every scenario
(`assert_quiescent`): a restore must leave exactly the cells evaluation would have.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
import trio
import trio.testing

from power.engine.loadspec import LoadSpec
from power.engine.manager import ModelManager
from power.engine.model import LoadedModel
from power.engine.promptcache import (
    FORMAT_VERSION,
    MAGIC,
    PromptCache,
    file_identity,
    model_key,
)
from power.engine.types import GenerationParams
from tests.fake_backend import BOS, FakeBackend, Worker
from tests.test_runner_fake import assert_quiescent, params, read_all, submit

PROMPT = [BOS, *range(2, 12)]  # 11 tokens; greedy output counts on from 12


def new_cache(folder: Path, *, max_bytes: int = 1 << 20, min_tokens: int = 4) -> PromptCache:
    ticks = itertools.count(1_000_000)
    return PromptCache(
        folder,
        max_bytes=max_bytes,
        min_tokens=min_tokens,
        run_sync=Worker(),
        wall_clock=lambda: float(next(ticks)),
    )


@contextlib.asynccontextmanager
async def cached_model(
    cache: PromptCache,
    *,
    model_path: str = "fake",
    num_ctx: int = 64,
    adapters: tuple[str, ...] = (),
    n_slots: int = 1,
    projector_path: str | None = None,
):
    """A fake model on `cache`; leaving the block unloads it (saving its slots, as the
    manager does)."""
    backend = FakeBackend()
    spec = LoadSpec(
        model_path=model_path,
        num_ctx=num_ctx,
        num_parallel=n_slots,
        adapters=adapters,
        projector_path=projector_path,
    )
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=Worker(), prompt_cache=cache)
    loaded.fake = backend.opened[-1][2]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loaded.run)
            yield loaded
            nursery.cancel_scope.cancel()
        await loaded.save_prompt_cache()
    finally:
        loaded.close()


async def generate(model: LoadedModel, prompt: list[int], n: int = 4):
    text, last = await read_all(submit(model, params(prompt, num_predict=n)))
    await trio.testing.wait_all_tasks_blocked()
    assert_quiescent(model)
    return text, last


async def reopened(folder: Path, **kwargs) -> PromptCache:
    cache = new_cache(folder, **kwargs)
    await cache.open()
    return cache


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pcache"))


# ---------------------------------------------------------------- saving


async def test_an_evicted_prefix_is_saved_with_its_exact_tokens(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)  # cells: the prompt and 3 fed tokens
        assert files(tmp_path) == []
        await generate(model, [BOS, 40, 41, 42, 43])  # takes the only slot: PROMPT's cells go
        assert model.fake.states_got == [0]
        (entry,) = cache.entries.values()
        assert entry.tokens == [*PROMPT, 12, 13, 14]
        assert cache.n_saves == 1
    # the unload saved the second prompt's cells too
    assert sorted(len(e.tokens) for e in cache.entries.values()) == [8, 14]
    assert len(files(tmp_path)) == 2


async def test_a_prefix_already_saved_is_not_written_again(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
        await generate(model, [BOS, 40, 41, 42, 43])
        await generate(model, PROMPT, n=1)  # restored; its cells end as a prefix of the file
    assert cache.n_saves == 2  # PROMPT's (eviction), the second's (eviction); not PROMPT again


async def test_short_prefixes_and_disabled_caches_save_nothing(tmp_path):
    cache = await reopened(tmp_path, min_tokens=100)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
        await generate(model, [BOS, 40, 41])
    assert files(tmp_path) == [] and model.fake.states_got == []
    off = await reopened(tmp_path / "off", max_bytes=0)
    async with cached_model(off) as model:
        assert model.runner.persistence is None
        await generate(model, PROMPT)
    assert not (tmp_path / "off").exists()


async def test_the_manager_saves_the_slots_when_it_unloads_a_model(tmp_path):
    cache = await reopened(tmp_path)
    worker = Worker()
    manager = ModelManager(backend=FakeBackend(), run_sync=worker, prompt_cache=cache)
    spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        async with manager.use("m", spec) as model:
            await read_all(submit(model, params(PROMPT)))
        assert files(tmp_path) == []
        await manager.unload("m")
        (entry,) = cache.entries.values()
        assert entry.tokens == [*PROMPT, 12, 13, 14]
        nursery.cancel_scope.cancel()


async def test_shifted_cells_are_never_saved(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache, num_ctx=32) as model:
        _, last = await generate(model, PROMPT, n=40)  # the context shifts
        assert model.runner.scheduler.slots[0].inexact_from is not None
    assert files(tmp_path) == []


# ---------------------------------------------------------------- restoring


async def test_a_restart_restores_the_prefix_instead_of_evaluating_it(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        cold_text, cold = await generate(model, PROMPT)
    assert cold.prompt_cached_count == 0
    cache = await reopened(tmp_path)  # a new process: the index comes from the folder
    async with cached_model(cache) as model:
        text, last = await generate(model, PROMPT)
        assert model.fake.states_set == [0]
    assert text == cold_text
    assert last.prompt_cached_count == len(PROMPT) - 1  # the last token is evaluated
    assert cache.n_restores == 1 and cache.n_restored_tokens == len(PROMPT) - 1


async def test_two_prompts_sharing_all_but_the_last_token_share_only_that(tmp_path):
    first = [*PROMPT[:-1], 30]
    second = [*PROMPT[:-1], 50]
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, first)
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        text, last = await generate(model, second)  # assert_quiescent: cells == second's
        assert model.runner.scheduler.slots[0].cached[: len(second)] == second
    assert text == "51 52 53 54 "
    assert last.prompt_cached_count == len(second) - 1


async def test_a_longer_prompt_restores_the_saved_prefix_and_evaluates_the_rest(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT, n=1)  # saved: PROMPT (the sampled token is not fed)
    longer = [*PROMPT, 30, 31, 32]
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        text, last = await generate(model, longer)
    assert text == "33 34 35 36 "
    assert last.prompt_cached_count == len(PROMPT)


@pytest.mark.parametrize(
    "change",
    [
        dict(model_path="other-model"),
        dict(num_ctx=128),
        dict(adapters=("lora.gguf",)),
    ],
    ids=["model", "num_ctx", "lora"],
)
async def test_no_restore_across_models_load_options_or_adapters(tmp_path, change):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    async with cached_model(cache, **change) as model:
        _, last = await generate(model, PROMPT)
        assert model.fake.states_set == []
    assert last.prompt_cached_count == 0


async def test_a_refused_state_clears_the_sequence_and_evaluates_the_prompt(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        model.fake.refuse_states = True
        text, last = await generate(model, PROMPT)
        assert model.fake.states_set == [0]
    assert text == "12 13 14 15 " and last.prompt_cached_count == 0


async def test_the_in_memory_prefix_wins_when_the_file_adds_too_little(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
        _, last = await generate(model, PROMPT)  # the slot's own cells
        assert model.fake.states_set == [] and last.prompt_cached_count == len(PROMPT) - 1


# ---------------------------------------------------------------- files


async def test_a_corrupt_file_is_removed_and_never_used(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    (path,) = files(tmp_path)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # a byte of the payload
    path.write_bytes(bytes(data))
    cache = await reopened(tmp_path)  # the header is fine: indexed
    assert len(cache.entries) == 1
    async with cached_model(cache) as model:
        text, last = await generate(model, PROMPT)
        assert model.fake.states_set == []
        assert path.name not in cache.entries and not path.exists()
    assert text == "12 13 14 15 " and last.prompt_cached_count == 0
    # the unload saved the cells again under the same name: a good file this time
    assert (await reopened(tmp_path)).entries[path.name].tokens[: len(PROMPT)] == PROMPT


@pytest.mark.parametrize("damage", ["truncated", "version", "garbage", "renamed"])
async def test_unusable_files_are_removed_when_the_folder_is_opened(tmp_path, damage):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    (path,) = files(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-1])
    elif damage == "version":
        path.write_bytes(MAGIC + (FORMAT_VERSION + 1).to_bytes(4, "little") + data[12:])
    elif damage == "garbage":
        path.write_bytes(b"x" * 100)
    else:
        path.rename(path.with_name("0" * 16 + "-" + "1" * 32 + ".pcache"))
    cache = await reopened(tmp_path)
    assert cache.entries == {} and files(tmp_path) == []


async def test_a_file_removed_behind_the_cache_is_a_miss(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    for path in files(tmp_path):
        path.unlink()
    async with cached_model(cache) as model:
        _, last = await generate(model, PROMPT)
    assert last.prompt_cached_count == 0


async def test_the_least_recently_used_files_go_beyond_the_size_bound(tmp_path):
    key = "k" * 64
    payload = b"p" * 1000
    probe = await reopened(tmp_path / "probe")
    await probe.save(key, [1, 2, 3, 4], payload)
    size = probe.n_bytes
    cache = await reopened(tmp_path / "lru", max_bytes=2 * size + size // 2)
    a, b, c = ([t, 2, 3, 4] for t in (10, 20, 30))
    assert await cache.save(key, a, payload)
    assert await cache.save(key, b, payload)
    assert await cache.read(cache.lookup(key, [*a, 9], 5)[0]) is not None  # a used last
    assert await cache.save(key, c, payload)
    assert sorted(e.tokens[0] for e in cache.entries.values()) == [10, 30]
    assert len(files(tmp_path / "lru")) == 2
    # the bound holds across a restart too (mtime is the last use)
    smaller = await reopened(tmp_path / "lru", max_bytes=size + size // 2)
    assert len(smaller.entries) == 1 and len(files(tmp_path / "lru")) == 1
    # a state larger than the whole bound is not saved
    assert not await smaller.save(key, [7, 7, 7, 7], b"p" * (2 * size))


async def test_a_failed_write_never_fails_the_caller(tmp_path):
    cache = await reopened(tmp_path / "cache")
    (tmp_path / "cache").rmdir()
    (tmp_path / "cache").write_bytes(b"")  # the folder is now a file: every write fails
    assert not await cache.save("k" * 64, [1, 2, 3, 4], b"x" * 10)
    assert cache.entries == {} and cache.n_pending_bytes == 0
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
        text, _ = await generate(model, [BOS, 40, 41, 42, 43])  # the eviction's save fails
    assert text == "44 45 46 47 "


def test_file_identity_uses_the_blob_digest(tmp_path):
    blob = tmp_path / ("sha256-" + "a" * 64)
    assert file_identity(str(blob)) == "sha256:" + "a" * 64
    other = tmp_path / "model.gguf"
    other.write_bytes(b"x")
    assert file_identity(str(other)).startswith(f"file:{other}:1:")
    spec = LoadSpec(model_path=str(blob))
    assert model_key(spec, "f/1") != model_key(spec, "f/2")
    assert model_key(spec, "f/1") != model_key(LoadSpec(model_path=str(blob), num_ctx=8), "f/1")


# ---------------------------------------------------------------- concurrency


async def test_a_held_write_does_not_hold_the_loop(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
        write = cache.run_sync.hold("_write_sync")
        text, _ = await generate(model, [BOS, 40, 41, 42, 43])  # evicts: the save waits
        assert text == "44 45 46 47 " and write.reached.is_set()
        assert cache.entries == {} and cache.n_pending_bytes > 0
        write.release()
        await trio.testing.wait_all_tasks_blocked()
        assert len(cache.entries) == 1 and cache.n_pending_bytes == 0


async def test_an_unload_during_the_eviction_read_leaves_consistent_cells(tmp_path):
    cache = await reopened(tmp_path)
    backend, worker = FakeBackend(), Worker()
    spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=1)
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=worker, prompt_cache=cache)
    loaded.fake = backend.opened[-1][2]
    async with trio.open_nursery() as nursery:
        await nursery.start(loaded.run)
        await generate(loaded, PROMPT)
        read = worker.hold("read")  # the eviction's state read, in the worker
        gen = submit(loaded, params([BOS, 40, 41, 42, 43]))
        await read.reached.wait()
        nursery.cancel_scope.cancel()  # the unload
        read.release()
    slot = loaded.runner.scheduler.slots[0]
    assert gen.state.name == "FAILED"
    assert loaded.fake.tokens(0) == slot.cached == [BOS]  # the admission's drop still happened
    assert await loaded.save_prompt_cache() == 0  # [BOS] is too short to save
    loaded.close()
    for entry in cache.entries.values():  # the eviction's save, if it got through, is right
        assert entry.tokens == [*PROMPT, 12, 13, 14]
    assert cache.n_pending_bytes == 0


async def test_a_generation_cancelled_during_its_restore_frees_its_slot(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        restore = model.runner.run_sync.hold("_restore_sync")
        gen = submit(model, params(PROMPT))
        await restore.reached.wait()
        model.runner.cancel(gen)
        restore.release()
        await trio.testing.wait_all_tasks_blocked()
        assert gen.state.name == "CANCELLED"
        assert_quiescent(model)
        text, last = await generate(model, PROMPT)  # the cells went with the cancelled one
    assert text == "12 13 14 15 " and last.prompt_cached_count == len(PROMPT) - 1


async def test_real_worker_threads_save_and_restore(tmp_path):
    for round_ in range(2):
        cache = PromptCache(tmp_path, max_bytes=1 << 20, min_tokens=4)  # trio.to_thread
        await cache.open()
        spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=1)
        loaded = await LoadedModel.open(spec, backend=FakeBackend(), prompt_cache=cache)
        async with trio.open_nursery() as nursery:
            await nursery.start(loaded.run)
            text, last = await read_all(submit(loaded, params(PROMPT)))
            nursery.cancel_scope.cancel()
        await loaded.save_prompt_cache()
        loaded.close()
        assert text == "12 13 14 15 "
        assert last.prompt_cached_count == (len(PROMPT) - 1 if round_ else 0)


async def test_dropping_a_short_tail_after_a_kept_prefix_writes_no_file(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)  # cells: PROMPT, 12, 13, 14
        await generate(model, [*PROMPT, 12, 13, 30])  # keeps 13 cells, drops 1
        assert model.fake.states_got == [] and files(tmp_path) == []
    (entry,) = cache.entries.values()  # the unload saves the longer prefix, once
    assert entry.tokens == [*PROMPT, 12, 13, 30, 31, 32, 33]


async def test_prefixes_with_images_are_never_saved_but_their_text_prefix_restores(tmp_path):
    cache = await reopened(tmp_path)
    text = " ".join(str(t) for t in PROMPT)
    async with cached_model(cache, projector_path="fake-mmproj") as model:
        tokens, images = await model.tokenize_with_images([text, b"\x30\x31\x32", "50 51"])
        image_params = GenerationParams(
            prompt=tuple(tokens), images=images, options=params(PROMPT).options
        )
        await read_all(model.runner.submit(image_params, model.make_sampler(image_params)))
    assert files(tmp_path) == []  # the slot's cells hold an image
    async with cached_model(cache, projector_path="fake-mmproj") as model:
        await generate(model, PROMPT)  # text only: saved at unload
    assert len(files(tmp_path)) == 1
    cache = await reopened(tmp_path)
    async with cached_model(cache, projector_path="fake-mmproj") as model:
        gen = model.runner.submit(image_params, model.make_sampler(image_params))
        _, last = await read_all(gen)
        assert model.projector.encoded == [b"\x30\x31\x32"]
    assert last.prompt_cached_count == len(PROMPT)  # up to the image, which is evaluated


def test_settings(monkeypatch, tmp_path):
    from power.config import DEFAULT_PROMPT_CACHE_SIZE, Settings

    monkeypatch.setenv("POWER_MODELS", str(tmp_path / "models"))
    settings = Settings.from_env()
    assert settings.prompt_cache_path == tmp_path / "models" / "prompt-cache"
    assert settings.prompt_cache_size == DEFAULT_PROMPT_CACHE_SIZE
    assert settings.prompt_cache_min_tokens == 256
    monkeypatch.setenv("POWER_PROMPT_CACHE_DIR", str(tmp_path / "pc"))
    monkeypatch.setenv("POWER_PROMPT_CACHE_SIZE", "500M")
    monkeypatch.setenv("POWER_PROMPT_CACHE_MIN_TOKENS", "1000")
    settings = Settings.from_env()
    assert settings.prompt_cache_path == tmp_path / "pc"
    assert settings.prompt_cache_size == 500 << 20
    assert settings.prompt_cache_min_tokens == 1000
    for off in ("0", "-1", "0G"):
        monkeypatch.setenv("POWER_PROMPT_CACHE_SIZE", off)
        assert Settings.from_env().prompt_cache_size == 0


async def test_a_queued_prompt_reads_its_file_while_the_loop_decodes(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    async with cached_model(cache, n_slots=2) as model:
        step = model.runner.run_sync.hold("_execute")
        other = submit(model, params([BOS, 40, 41, 42, 43], num_predict=2))
        await step.reached.wait()  # the loop is inside a decode
        gen = submit(model, params(PROMPT))
        await trio.testing.wait_all_tasks_blocked()
        assert cache.run_sync.calls["read_sync"] == 1  # read ahead, the decode still held
        assert not model.fake.states_set
        step.release()
        _, last = await read_all(gen)
        await read_all(other)
        await trio.testing.wait_all_tasks_blocked()
        assert_quiescent(model)
        assert cache.run_sync.calls["read_sync"] == 1  # the admission used the bytes read
        assert model.runner.persistence._reads == {} and model.runner.persistence._wanted == {}
    assert last.prompt_cached_count == len(PROMPT) - 1


async def test_a_withdrawn_request_drops_its_read_ahead(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        step = model.runner.run_sync.hold("_execute")
        busy = submit(model, params([BOS, 40, 41, 42, 43], num_predict=2))
        await step.reached.wait()
        queued = [submit(model, params(PROMPT)) for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()
        persistence = model.runner.persistence
        assert len(persistence._reads) == 1 and len(persistence._wanted) == 2
        model.runner.cancel(queued[0])
        assert len(persistence._reads) == 1  # the other still wants it
        model.runner.cancel(queued[1])
        assert persistence._reads == {} and persistence._wanted == {}
        step.release()
        await read_all(busy)


async def test_a_prompt_whose_prefix_a_slot_holds_reads_no_file(tmp_path):
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)
    cache = await reopened(tmp_path)
    async with cached_model(cache) as model:
        await generate(model, PROMPT)  # restored from the file
        assert cache.run_sync.calls["read_sync"] == 1
        _, last = await generate(model, [*PROMPT, 12, 13, 14, 15])  # the next turn
        assert cache.run_sync.calls["read_sync"] == 1  # the slot's cells, no file read
    assert last.prompt_cached_count == len(PROMPT) + 3
