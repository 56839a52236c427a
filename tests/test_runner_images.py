"""Images in the step loop, on the fake backend: deterministic and instant.

The fake projector (`tests.fake_backend.FakeProjector`) makes an image of bytes `[a, b, c]` take
three positions whose embeddings read a, b, c; the fake context stores them as if they were
tokens, so the counting script continues an image that ends a prompt with c + 1.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

from power.engine.loadspec import LoadSpec
from power.engine.model import LoadedModel
from power.engine.multimodal import (
    build_prompt,
    fit_prompt,
    is_continuation,
    is_image_start,
    placeholder_ids,
)
from power.engine.scheduler import Scheduler, SlotState
from power.engine.types import EngineError, GenerationParams
from power.options import Options
from tests.fake_backend import BOS, FakeBackend, Worker, running
from tests.test_runner_fake import read_all

GREEDY = dict(temperature=0.0, repeat_penalty=1.0)
RED = bytes([10, 11, 12])
BLUE = bytes([30, 31, 32])


@contextlib.asynccontextmanager
async def vision_model(*, n_slots: int = 4, num_ctx: int = 64, num_batch: int = 512):
    backend = FakeBackend()
    worker = Worker()
    spec = LoadSpec(
        model_path="fake",
        projector_path="fake-mmproj",
        num_ctx=num_ctx,
        num_batch=num_batch,
        num_parallel=n_slots,
    )
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=worker)
    loaded.worker = worker
    loaded.fake = backend.opened[-1][2]
    loaded.projector_fake = backend.projector
    async with running(loaded):
        yield loaded
    assert backend.projector.closed


async def start(model: LoadedModel, parts: list, **options):
    options.setdefault("num_predict", 3)
    tokens, images = await model.tokenize_with_images(parts)
    params = GenerationParams(
        prompt=tuple(tokens), images=images, options=Options(**{**GREEDY, **options})
    )
    return model.runner.submit(params, model.make_sampler(params))


async def run(model: LoadedModel, parts: list, **options):
    return await read_all(await start(model, parts, **options))


def assert_cells_match(model: LoadedModel) -> None:
    """Every slot idle, and the fake's cells are what each slot caches (an image's cells hold
    its bytes where the slot holds placeholders)."""
    runner = model.runner
    assert runner.n_active == 0 and runner.n_waiting == 0
    for slot in runner.scheduler.slots:
        assert slot.state is SlotState.IDLE
        cells = model.fake.tokens(slot.seq_id)
        assert len(cells) == len(slot.cached)
        assert [c for c, t in zip(cells, slot.cached, strict=True) if t >= 0] == [
            t for t in slot.cached if t >= 0
        ]


# ---------------------------------------------------------------- the representation


def test_an_image_is_a_start_id_then_continuation_ids():
    from power.engine.backend import ImageChunk

    chunk = ImageChunk("k:0", n_tokens=3, n_pos=3)
    tokens, images = build_prompt([BOS, 5, chunk, 7, chunk])
    start, continuation = placeholder_ids("k:0")
    assert tokens == [
        BOS,
        5,
        start,
        continuation,
        continuation,
        7,
        start,
        continuation,
        continuation,
    ]
    assert is_image_start(start) and is_continuation(continuation)
    assert len(images) == 1 and images[0].start_id == start  # the same image once
    other, _ = placeholder_ids("k:1")
    assert other != start


def test_truncation_keeps_images_whole():
    from power.engine.backend import ImageChunk

    tokens, _ = build_prompt([BOS, 2, ImageChunk("a", 4, 4), 3, 4, ImageChunk("b", 4, 4), 5, 6])
    for limit in range(2, len(tokens)):
        for n_keep in range(0, limit + 1):
            kept = fit_prompt(tokens, limit, n_keep)
            assert len(kept) <= limit
            for i, t in enumerate(kept):  # every continuation follows its start or another
                if is_continuation(t):
                    assert i > 0 and kept[i - 1] in (t, t + 1)
            starts = [i for i, t in enumerate(kept) if is_image_start(t)]
            for i in starts:
                assert kept[i + 1 : i + 4] == [kept[i] - 1] * 3


def test_scheduler_never_batches_an_image_with_text():
    from power.engine.backend import ImageChunk

    tokens, _ = build_prompt([BOS, 2, 3, ImageChunk("a", 5, 5), 4, 5])

    class Req:
        prompt = tokens

    sched = Scheduler(n_slots=1, n_ctx_seq=100, n_batch=64)
    sched.submit(Req())
    sched.admit()
    assert sched.plan_image() is None  # text first
    plan = sched.plan()
    assert [e.tokens for e in plan.entries] == [[BOS, 2, 3]]
    sched.commit(plan, {})
    assert sched.plan().entries == []  # the image is next: no text chunk
    image = sched.plan_image()
    (entry,) = image.entries
    assert entry.tokens == tokens[3:8] and entry.start_pos == 3 and not entry.wants_logits
    sched.commit(image, {})
    (last,) = sched.plan().entries
    assert last.tokens == [4, 5] and last.start_pos == 8 and last.wants_logits


def test_reuse_stops_before_an_image_it_would_cut():
    from power.engine.backend import ImageChunk

    tokens, _ = build_prompt([BOS, 2, ImageChunk("a", 4, 4)])

    class Req:
        prompt = tokens

    sched = Scheduler(n_slots=1, n_ctx_seq=100, n_batch=64)
    sched.slots[0].cached = list(tokens)  # the whole prompt is cached
    sched.submit(Req())
    (admission,) = sched.admit()
    # one entry must be evaluated for logits: the image goes again, whole
    assert admission.n_reuse == 2 and sched.slots[0].pending == tokens[2:]


# ---------------------------------------------------------------- the step loop


async def test_an_image_reaches_the_model_and_counts_as_prompt_tokens():
    async with vision_model() as model:
        text, last = await run(model, [f"{BOS} 2", RED])
        assert text == "13 14 15 "  # continues from the image's last embedding
        assert last.prompt_eval_count == 2 + len(RED)
        assert model.fake.image_decodes == [(0, 2, 3)]
        assert list(last.context) == [BOS, 2, 13, 14, 15]  # images are left out of context
        await trio.testing.wait_all_tasks_blocked()
        assert_cells_match(model)


async def test_different_images_differ_and_the_same_image_agrees():
    async with vision_model() as model:
        red = await run(model, [f"{BOS} 2", RED])
        blue = await run(model, [f"{BOS} 2", BLUE])
        again = await run(model, [f"{BOS} 2", RED])
        assert red[0] != blue[0] and red[0] == again[0]


async def test_a_cached_image_is_neither_encoded_nor_evaluated_again():
    async with vision_model(n_slots=1) as model:
        first = await run(model, [f"{BOS} 2", RED, "20"])
        assert first[1].prompt_eval_count == 6 and model.projector_fake.encoded == [RED]
        second = await run(model, [f"{BOS} 2", RED, "20"])
        assert second[0] == first[0] == "21 22 23 "
        assert second[1].prompt_evaluated_count == 1  # only the last text token
        assert model.projector_fake.encoded == [RED]
        third = await run(model, [f"{BOS} 2", BLUE, "20"])
        assert third[1].prompt_evaluated_count == 4  # the reuse stops at the image that differs
        assert model.projector_fake.encoded == [RED, BLUE]
        await trio.testing.wait_all_tasks_blocked()
        assert_cells_match(model)


async def test_images_are_evaluated_between_text_steps_of_other_sequences():
    async with vision_model(n_slots=2) as model:
        talker = model.runner.submit(*_text(model, [BOS, 40], num_predict=10))
        viewer = await start(model, [f"{BOS} 2", RED, "5", BLUE, "7"], num_predict=2)
        (text, _), (seen, last) = await read_all(talker), await read_all(viewer)
        assert text == " ".join(str(t) for t in range(41, 51)) + " "
        assert seen == "8 9 " and last.prompt_eval_count == 2 + 3 + 1 + 3 + 1
        assert [d[1:] for d in model.fake.image_decodes] == [(2, 3), (6, 3)]
        await trio.testing.wait_all_tasks_blocked()
        assert_cells_match(model)


def _text(model: LoadedModel, prompt: list[int], **options):
    params = GenerationParams(prompt=tuple(prompt), options=Options(**{**GREEDY, **options}))
    return params, model.make_sampler(params)


async def test_an_undecodable_image_is_a_400_before_anything_runs():
    async with vision_model() as model:
        with pytest.raises(EngineError) as caught:
            await model.tokenize_with_images(["3", b"BAD image"])
        assert caught.value.status == 400
        assert model.fake.n_decodes == 0


async def test_an_encoder_failure_fails_that_sequence_only():
    async with vision_model(n_slots=2) as model:
        model.projector_fake.fail_encodes = True
        talker = model.runner.submit(*_text(model, [BOS, 40], num_predict=4))
        viewer = await start(model, [f"{BOS} 2", RED])
        with pytest.raises(EngineError, match="encoder"):
            await read_all(viewer)
        assert (await read_all(talker))[0] == "41 42 43 44 "
        await trio.testing.wait_all_tasks_blocked()
        assert model.fake.tokens(1) in ([], [BOS, 40, 41, 42, 43])
        assert_cells_match(model)


async def test_cancel_during_an_image_step_frees_the_cells():
    async with vision_model(n_slots=1) as model:
        gate = model.worker.hold("_execute_image")
        viewer = await start(model, [f"{BOS} 2", RED, "9"])
        await gate.reached.wait()
        model.runner.cancel(viewer)
        gate.release()
        await trio.testing.wait_all_tasks_blocked()
        assert viewer.cancelled and model.fake.tokens(0) == []
        assert_cells_match(model)


async def test_a_prompt_too_long_loses_whole_images():
    async with vision_model(n_slots=1, num_ctx=32) as model:
        parts = [f"{BOS} 2", bytes(range(40, 52)), " ".join(["3"] * 10), bytes(range(20, 32)), "5"]
        gen = await start(model, parts, num_keep=4)
        text, last = await read_all(gen)
        assert last.truncated
        prompt = gen.prompt
        assert len(prompt) <= 31
        assert not is_continuation(prompt[0])
        for i, t in enumerate(prompt):
            if is_continuation(t):
                assert is_image_start(prompt[i - 1]) or prompt[i - 1] == t


async def test_a_model_without_projector_refuses_images():
    backend = FakeBackend()
    spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=1)
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=Worker())
    try:
        assert not loaded.has_vision
        with pytest.raises(EngineError) as caught:
            await loaded.tokenize_with_images(["3", RED])
        assert caught.value.status == 400
    finally:
        loaded.close()


async def test_an_unknown_placeholder_is_refused():
    async with vision_model() as model:
        params = GenerationParams(prompt=(BOS, -4, 5), options=Options(**GREEDY))
        with pytest.raises(EngineError, match="outside the vocabulary"):
            model.runner.submit(params, model.make_sampler(params))


def test_a_context_shift_drops_whole_images():
    from power.engine.backend import ImageChunk

    tokens, _ = build_prompt([BOS, 2, ImageChunk("a", 6, 6), 3, 4, 5, 6, 7, 8])

    class Req:
        prompt = tokens

    sched = Scheduler(n_slots=1, n_ctx_seq=len(tokens), n_batch=64)
    slot = sched.slots[0]
    slot.cached = list(tokens)
    slot.state, slot.next_token = SlotState.GENERATING, 9
    (shift,), full = sched.shifts_needed(lambda slot: (True, 4))  # n_keep 4 is inside the image
    assert not full
    assert shift.n_keep == 2 and shift.n_discard == 6  # the image goes whole
    assert slot.cached == [BOS, 2, 3, 4, 5, 6, 7, 8]
