"""The runner's lifecycle edges on a fake backend: every test is deterministic and instant.

The fake's decode runs on the trio thread behind gates (`tests.fake_backend.Worker`), so a test
holds the loop at a chosen step, acts (cancel, fail, read slowly), releases it, and checks the
state with `trio.testing.wait_all_tasks_blocked()`. No test sleeps.
"""

from __future__ import annotations

import collections
import contextlib
import random

import numpy as np
import pytest
import trio
import trio.testing

from power.engine.generation import Collector, Generation, GenerationState
from power.engine.lifecycle import IllegalTransition
from power.engine.loadspec import LoadSpec
from power.engine.model import LoadedModel
from power.engine.runner import Runner
from power.engine.scheduler import SlotState
from power.engine.types import Chunk, ContextLost, DoneReason, EngineError, GenerationParams
from power.options import Options
from tests.fake_backend import (
    BOS,
    EOG,
    POISON,
    FakeBackend,
    FakeContext,
    FakeVocabulary,
    Worker,
    counting,
    nan_on_poison,
    running,
)

GREEDY = dict(temperature=0.0, repeat_penalty=1.0)


def options(**extra) -> Options:
    return Options(**{**GREEDY, **extra})


def params(prompt, **extra) -> GenerationParams:
    extra.setdefault("num_predict", 4)
    return GenerationParams(prompt=tuple(prompt), options=options(**extra))


@contextlib.asynccontextmanager
async def fake_model(
    *, n_slots: int = 4, num_ctx: int = 64, num_batch: int = 512, backend=None, worker=None
):
    backend = backend or FakeBackend()
    worker = worker or Worker()
    spec = LoadSpec(model_path="fake", num_ctx=num_ctx, num_batch=num_batch, num_parallel=n_slots)
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=worker)
    loaded.worker = worker
    loaded.fake = backend.opened[-1][2]
    async with running(loaded):
        yield loaded


def submit(model: LoadedModel, p: GenerationParams) -> Generation:
    return model.runner.submit(p, model.make_sampler(p))


async def read_all(gen: Generation) -> tuple[str, Chunk]:
    text = []
    while True:
        for chunk in await gen.collector.take():
            text.append(chunk.text)
            if chunk.done:
                return "".join(text), chunk


def assert_quiescent(model: LoadedModel) -> None:
    """No active or waiting sequence, every slot idle, and the fake's cells are exactly what
    the scheduler believes each slot caches (no leaked or missing KV cells)."""
    runner = model.runner
    assert runner.n_active == 0 and runner.n_waiting == 0
    for slot in runner.scheduler.slots:
        assert slot.state is SlotState.IDLE and slot.request is None
        assert model.fake.tokens(slot.seq_id) == slot.cached


# ---------------------------------------------------------------- the happy path


async def test_sequences_generate_their_own_continuations():
    async with fake_model() as model:
        gens = [submit(model, params([BOS, 10 * i + 2], num_predict=3)) for i in range(4)]
        results = [await read_all(g) for g in gens]
        for i, (text, last) in enumerate(results):
            start = 10 * i + 3
            assert text == f"{start} {start + 1} {start + 2} "
            assert last.done_reason is DoneReason.LENGTH and last.eval_count == 3
        assert all(g.state is GenerationState.FINISHED for g in gens)
        await trio.testing.wait_all_tasks_blocked()
        assert_quiescent(model)


async def test_real_worker_threads_give_the_same_result():
    spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=4)
    loaded = await LoadedModel.open(spec, backend=FakeBackend())  # trio.to_thread.run_sync
    async with trio.open_nursery() as nursery:
        await nursery.start(loaded.run)
        outs = [await read_all(submit(loaded, params([BOS, 20], num_predict=5)))]
        assert outs[0][0] == "21 22 23 24 25 "
        nursery.cancel_scope.cancel()
    loaded.close()


async def test_an_end_of_generation_token_finishes_with_stop():
    async with fake_model() as model:
        text, last = await read_all(submit(model, params([BOS, 61], num_predict=10)))
        assert text == "62 63 " and last.done_reason is DoneReason.STOP


async def test_num_predict_minus_2_fills_the_context_and_stops_without_shifting():
    async with fake_model(n_slots=1, num_ctx=32) as model:
        text, last = await read_all(submit(model, params([BOS, 2], num_predict=-2)))
        assert last.done_reason is DoneReason.LENGTH
        # 2 prompt cells + 30 generated tokens fill the 32 cells; the 31st is sampled, never fed
        assert last.eval_count == 31
        unbounded = submit(model, params([BOS, 2], num_predict=40))
        text, last = await read_all(unbounded)  # num_predict >= 0: the context shifts
        assert last.eval_count == 40 and last.done_reason is DoneReason.LENGTH
        await trio.testing.wait_all_tasks_blocked()
        assert_quiescent(model)


@pytest.mark.parametrize("n_prompt", [2, 31, 32, 200])
async def test_a_long_prompt_on_the_smallest_context_keeps_at_least_one_token(n_prompt):
    async with fake_model(n_slots=1, num_ctx=0) as model:  # clamped up to MIN_NUM_CTX
        prompt = [BOS] + [2 + i % 60 for i in range(n_prompt - 1)]
        text, last = await read_all(submit(model, params(prompt, num_predict=2, num_keep=-1)))
        assert last.eval_count == 2 and 1 <= len(last.context) - 2 <= 31
        assert last.context[0] == BOS


async def test_a_prompt_token_outside_the_vocabulary_is_refused_before_any_decode():
    async with fake_model() as model:
        with pytest.raises(EngineError) as info:
            submit(model, params([BOS, 64]))
        assert info.value.status == 400
        assert model.fake.n_decodes == 0


# ---------------------------------------------------------------- cancellation in every state


async def test_cancel_while_queued_withdraws_at_once():
    async with fake_model(n_slots=1) as model:
        gate = model.worker.hold("_execute")
        first = submit(model, params([BOS, 2], num_predict=2))
        await gate.reached.wait()
        queued = submit(model, params([BOS, 30], num_predict=2))
        assert queued.state is GenerationState.QUEUED and model.runner.n_waiting == 1
        model.runner.cancel(queued)
        assert queued.state is GenerationState.CANCELLED and model.runner.n_waiting == 0
        gate.release()
        assert (await read_all(first))[0] == "3 4 "
        await trio.testing.wait_all_tasks_blocked()
        assert_quiescent(model)


async def test_cancel_while_prefilling_frees_the_slot_and_its_cells():
    async with fake_model(n_slots=1, num_batch=1) as model:  # one prompt token per step
        model.worker.hold("_execute")  # step 1 passes below
        gate2 = model.worker.hold("_execute")
        gen = submit(model, params([BOS] + list(range(2, 12))))
        model.worker.gates["_execute"][0].release()
        await gate2.reached.wait()
        assert gen.state is GenerationState.PREFILLING
        model.runner.cancel(gen)
        assert gen.state is GenerationState.PREFILLING  # released at the step boundary
        gate2.release()
        await trio.testing.wait_all_tasks_blocked()
        assert gen.state is GenerationState.CANCELLED
        assert model.fake.tokens(0) == []
        assert_quiescent(model)


async def test_cancel_while_generating_through_the_consumer():
    async with fake_model(n_slots=2) as model:
        seen = []

        async def consumer(task_status=trio.TASK_STATUS_IGNORED):
            p = params([BOS, 2], num_predict=50)
            with trio.CancelScope() as scope:
                task_status.started(scope)
                async with contextlib.aclosing(model.generate(p)) as stream:
                    async for chunk in stream:
                        seen.append(chunk.text)

        async with trio.open_nursery() as nursery:
            gate = model.worker.hold("_execute")
            scope = await nursery.start(consumer)
            await gate.reached.wait()
            gate.release()
            gate = model.worker.hold("_execute")
            await gate.reached.wait()  # one token is out, the next step is under way
            slot = model.runner.scheduler.slots[0]
            assert slot.request.state is GenerationState.GENERATING
            generation = slot.request
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert generation.cancel_requested
            gate.release()
        await trio.testing.wait_all_tasks_blocked()
        assert generation.state is GenerationState.CANCELLED
        assert seen and len(generation.generated) < 50
        assert_quiescent(model)
        assert model.fake.tokens(0) == []


async def test_1000_random_cancellations_leave_nothing_behind():
    rng = random.Random(20261202)
    async with fake_model(n_slots=4, num_ctx=48, num_batch=16) as model:
        runner = model.runner
        prefixes = [[BOS] + [rng.randrange(2, 60) for _ in range(20)] for _ in range(3)]
        live: list[Generation] = []
        everything: list[Generation] = []
        cancelled_in: collections.Counter[GenerationState] = collections.Counter()
        for _ in range(1000):
            prefix = rng.choice(prefixes)
            prompt = prefix[: rng.randrange(1, 21)] + [rng.randrange(2, 60)] * rng.randrange(3)
            p = params(prompt, num_predict=rng.randrange(1, 30), num_keep=rng.choice([0, 4]))
            gen = submit(model, p)
            live.append(gen)
            everything.append(gen)
            for _ in range(rng.randrange(3)):
                if live:
                    victim = live.pop(rng.randrange(len(live)))
                    cancelled_in[victim.state] += 1
                    runner.cancel(victim)
            for _ in range(rng.randrange(4)):
                await trio.lowlevel.checkpoint()  # let the loop run a few steps
            live = [g for g in live if not g.done]
        for gen in live:
            runner.cancel(gen)
        await trio.testing.wait_all_tasks_blocked()
        states = {g.state for g in everything}
        assert states <= {GenerationState.FINISHED, GenerationState.CANCELLED}
        assert GenerationState.FINISHED in states and GenerationState.CANCELLED in states
        for state in (
            GenerationState.QUEUED,
            GenerationState.PREFILLING,
            GenerationState.GENERATING,
        ):
            assert cancelled_in[state] > 20, cancelled_in  # every cancellable state was hit
        assert runner.broken is None
        assert_quiescent(model)


# ---------------------------------------------------------------- errors stay with their sequence


async def test_a_failing_sampler_fails_one_of_eight_sequences_and_the_others_finish():
    class Failing:
        def __init__(self, inner, at):
            self.inner, self.at, self.n = inner, at, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def sample(self, row):
            self.n += 1
            if self.n == self.at:
                raise ZeroDivisionError("sampler bug")
            return self.inner.sample(row)

    async with fake_model(n_slots=8) as model:
        gens = []
        for i in range(8):
            p = params([BOS, 2 + 5 * i], num_predict=6)
            sampler = model.make_sampler(p)
            gens.append(model.runner.submit(p, Failing(sampler, 3) if i == 5 else sampler))
        for i, gen in enumerate(gens):
            if i == 5:
                with pytest.raises(EngineError, match="sampler bug"):
                    await read_all(gen)
                assert gen.state is GenerationState.FAILED
            else:
                text, last = await read_all(gen)
                assert last.eval_count == 6 and gen.state is GenerationState.FINISHED
        assert model.runner.broken is None
        await trio.testing.wait_all_tasks_blocked()
        assert_quiescent(model)


async def test_nan_logits_fail_that_sequence_only():
    async with fake_model(backend=FakeBackend(script=nan_on_poison)) as model:
        poisoned = submit(model, params([BOS, POISON]))
        healthy = submit(model, params([BOS, 40]))
        sampled = submit(model, params([BOS, POISON], temperature=0.7, seed=1))
        with pytest.raises(EngineError, match="NaN"):
            await read_all(poisoned)
        with pytest.raises(EngineError, match="NaN"):
            await read_all(sampled)
        assert (await read_all(healthy))[0] == "41 42 43 44 "
        assert model.runner.broken is None


async def test_a_token_that_cannot_be_detokenised_fails_that_sequence_only():
    async with fake_model(backend=FakeBackend(bad_tokens=[7])) as model:
        bad = submit(model, params([BOS, 5]))  # generates 6, then 7
        good = submit(model, params([BOS, 20]))
        with pytest.raises(EngineError, match="cannot detokenize 7"):
            await read_all(bad)
        assert (await read_all(good))[0] == "21 22 23 24 "


@pytest.mark.parametrize(
    "extreme",
    [
        dict(repeat_penalty=1e-45),
        dict(frequency_penalty=-1e308),
        dict(presence_penalty=float("-inf")),
        dict(repeat_penalty=0.0, temperature=0.9),
        dict(temperature=1e-45),
        dict(temperature=1e308, top_k=0, top_p=1.0),
        dict(mirostat=2, mirostat_tau=1e308, temperature=0.5),
        dict(typical_p=0.0, temperature=0.5),
    ],
)
async def test_extreme_sampling_values_do_not_reach_an_error(extreme):
    # built directly, past the option parser's ranges: the sampler itself must stay robust
    async with fake_model() as model:
        p = GenerationParams(
            prompt=(BOS, 5, 6, 7, 5, 6, 7), options=Options(num_predict=5, seed=3, **extreme)
        )
        sampler = model.make_sampler(p)
        text, last = await read_all(model.runner.submit(p, sampler))
        assert last.eval_count + (last.done_reason is DoneReason.STOP) >= 1


async def test_decode_failure_with_a_slow_reader_delivers_text_then_the_error():
    async with fake_model(n_slots=2) as model:
        first = submit(model, params([BOS, 2], num_predict=20))
        await trio.testing.wait_all_tasks_blocked()  # nobody reads: text piles up, merged
        assert first.state is GenerationState.FINISHED
        model.fake.fail_decodes.add(model.fake.n_decodes + 2)
        slow = submit(model, params([BOS, 30], num_predict=20))
        await trio.testing.wait_all_tasks_blocked()
        assert slow.state is GenerationState.FAILED
        chunks = await slow.collector.take()
        assert chunks[0].text == "31 "  # what was produced before the failed decode
        with pytest.raises(EngineError, match="scripted failure"):
            await slow.collector.take()
        assert model.runner.broken is None
        after = submit(model, params([BOS, 40]))
        assert (await read_all(after))[0] == "41 42 43 44 "
        await trio.testing.wait_all_tasks_blocked()
        assert_quiescent(model)


async def test_a_broken_kv_cache_stops_the_loop_and_fails_everyone():
    async with fake_model(n_slots=1, num_batch=1) as model:
        gate = model.worker.hold("_execute")
        running = submit(model, params([BOS, 2, 3, 4]))
        await gate.reached.wait()
        queued = submit(model, params([BOS, 9]))
        model.fake.broken = True
        model.runner.cancel(running)  # its release needs the KV cache
        gate.release()
        await trio.testing.wait_all_tasks_blocked()
        assert model.runner.broken is not None
        assert running.state is GenerationState.CANCELLED
        assert queued.state is GenerationState.FAILED
        with pytest.raises(EngineError, match="runner stopped"):
            submit(model, params([BOS, 2]))


async def test_a_lost_context_stops_the_loop_and_fails_every_sequence_with_its_reason():
    """A split model whose worker died: its decode raises ContextLost. Unlike a DecodeError,
    this is not the batch's fault: the loop stops, so that the manager reloads the model."""
    async with fake_model(n_slots=2) as model:
        model.fake.lose_decodes.add(model.fake.n_decodes + 2)
        gens = [submit(model, params([BOS, 2], num_predict=9)) for _ in range(2)]
        gens.append(submit(model, params([BOS, 30], num_predict=9)))  # queued: no slot left
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(model.runner.broken, ContextLost)
        assert model.failure is model.runner.broken
        for gen in gens:
            assert gen.state is GenerationState.FAILED
            with pytest.raises(EngineError, match="model runner failed: scripted loss"):
                await read_all(gen)


async def test_an_embedding_model_whose_context_is_lost_stops_serving():
    spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=2)
    context = FakeContext(n_seq_max=2, n_ctx_seq=64, n_batch=128)
    context.is_embedding = True
    model = LoadedModel(spec, FakeVocabulary(), context, run_sync=Worker())
    async with trio.open_nursery() as nursery:
        await nursery.start(model.run)
        assert len((await model.embed(["2 3", "4"])).embeddings) == 2
        assert model.failure is None
        context.lose_decodes.add(context.n_decodes + 1)
        with pytest.raises(ContextLost, match="scripted loss"):
            await model.embed(["5 6"])
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks == frozenset()  # `run` returned: the manager reloads
        assert isinstance(model.failure, ContextLost)
    model.close()


async def test_unloading_fails_what_is_left_with_model_unloaded():
    model_cm = fake_model(n_slots=1)
    model = await model_cm.__aenter__()
    gate = model.worker.hold("_execute")
    running = submit(model, params([BOS, 2], num_predict=9))
    queued = submit(model, params([BOS, 9]))
    await gate.reached.wait()
    gate.release()
    await model_cm.__aexit__(None, None, None)  # cancels the loop after the held step
    for gen in (running, queued):
        assert gen.state is GenerationState.FAILED
        with pytest.raises(EngineError, match="model unloaded"):
            await read_all(gen)
    assert model.fake.closed and model.model.closed


# ---------------------------------------------------------------- Collector and lifecycle


async def test_collector_fail_with_pending_text_never_hangs_the_next_take():
    collector = Collector()
    collector.push("partial ", 5, None)
    collector.fail(EngineError("decode failed"))
    results = []

    async def reader():
        results.append(await collector.take())
        try:
            await collector.take()
        except EngineError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert len(results) == 2, "the second take must not wait"
        nursery.cancel_scope.cancel()
    assert results[0][0].text == "partial " and isinstance(results[1], EngineError)
    collector.push("late", 6, None)  # ignored once ended
    with pytest.raises(EngineError):
        await collector.take()


async def test_collector_merges_what_a_slow_reader_missed():
    collector = Collector()
    for i in range(3):
        collector.push(f"{i} ", i, None)
    collector.finish(Chunk(done=True, done_reason=DoneReason.STOP))
    chunks = await collector.take()
    assert [c.text for c in chunks] == ["0 1 2 ", ""] and chunks[0].token_ids == (0, 1, 2)
    assert chunks[1].done


def test_a_generation_refuses_an_illegal_transition():
    p = params([BOS, 2])
    gen = Generation(p, type("S", (), {"close": lambda self: None})(), False)
    with pytest.raises(IllegalTransition):
        gen.prompt_done()  # QUEUED -> GENERATING skips PREFILLING
    gen.cancel()
    with pytest.raises(IllegalTransition):
        gen.admitted(None)  # a cancelled generation never gets a slot
    assert gen.done and gen.cancelled


def test_runner_needs_no_model_file():
    from tests.fake_backend import FakeContext, FakeVocabulary

    runner = Runner(
        FakeVocabulary(),
        FakeContext(n_seq_max=2, n_ctx_seq=32, n_batch=8, script=counting),
        n_slots=2,
        n_ctx_seq=32,
    )
    assert runner.vocab_info.eog_ids == (EOG,) and runner.n_active == 0
    assert np.argmax(counting([5])) == 6
