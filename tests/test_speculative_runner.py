"""Speculative decoding in the runner, on the fake backend: identity with plain decoding across
eight concurrent sequences of different kinds, KV cells after rejections, adaptive draft
length. Deterministic and instant (see tests/test_runner_fake.py for the harness)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import trio
import trio.testing

from power.engine.loadspec import LoadSpec
from power.engine.model import LoadedModel
from power.engine.sampling import SequenceSampler
from power.engine.types import EngineError, GenerationParams
from power.options import Options
from tests.fake_backend import BOS, EOG, N_VOCAB, FakeBackend, Worker, counting, running

PERIOD = 6
#: A fake decode costs nothing: a draft token's cost is what the test says (among 8 sequences,
#: llama.cpp's measured 0.5 would make drafting pay only when nearly always right)
TOKEN_COST = 0.05


def copy_with_edits(history: list[int]) -> np.ndarray:
    """The model repeats what came PERIOD tokens back, except where the sum of the tokens so
    far is a multiple of 11 (an edit): predictable by prompt lookup, with rejections."""
    n = len(history)
    if n >= PERIOD and sum(history) % 11:
        target = history[-PERIOD]
    else:
        target = history[-1] * 7 % 50
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[max(2, target)] = 10.0
    row[(target + 3) % N_VOCAB] = 8.5  # a runner-up, so sampling has something to choose
    return row


def contrary(history: list[int]) -> np.ndarray:
    """Never what prompt lookup guesses: after a trigram seen before, the token that followed
    it plus one (the lookup proposes the token that followed it)."""
    follower = None
    for n in (3, 2):
        if len(history) > n:
            tail = history[-n:]
            for start in range(len(history) - n - 1, -1, -1):
                if history[start : start + n] == tail:
                    follower = history[start + n]
                    break
        if follower is not None:
            break
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[2 + (follower - 1) % 60 if follower is not None else max(2, (history[-1] + 1) % 62)] = 10
    return row


class EvenOnly:
    """A grammar that allows even tokens only (and the end)."""

    def allowed(self, ids, logits):
        return (np.asarray(ids) % 2 == 0) | (np.asarray(ids) == EOG)

    def accept(self, token):
        assert token % 2 == 0

    def close(self):
        pass


@contextlib.asynccontextmanager
async def fake_model(script, *, speculative=True, n_slots=8, num_ctx=256, num_batch=512):
    backend = FakeBackend(script=script)
    spec = LoadSpec(
        model_path="fake",
        num_ctx=num_ctx,
        num_batch=num_batch,
        num_parallel=n_slots,
        speculative=speculative,
    )
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=Worker())
    loaded.fake = backend.opened[-1][2]
    loaded.runner.token_cost = TOKEN_COST
    async with running(loaded):
        yield loaded


async def read_all(gen):
    text, ids = [], []
    while True:
        for chunk in await gen.collector.take():
            text.append(chunk.text)
            ids.extend(chunk.token_ids)
            if chunk.done:
                return "".join(text), tuple(ids), chunk


PATTERN = [20, 21, 22, 23, 24, 25]


def mixed_requests():
    """Eight kinds: repetitive (drafts accepted), counting (no drafts), a grammar, stop
    strings, seeded sampling, logprobs, penalties, and draft_num_predict 0."""
    base = dict(temperature=0.0, repeat_penalty=1.0, num_predict=40)
    repetitive = [BOS] + PATTERN * 4
    return [
        (repetitive, base, None),
        ([BOS, 2, 3, 4], base, None),
        (repetitive, dict(base, num_predict=24), "even"),
        (repetitive, dict(base, stop=["24 25 20"], num_predict=60), None),
        (repetitive, dict(base, temperature=0.8, top_k=4, seed=7), None),
        ([BOS, 30, 31, 32, 33, 34, 35] * 3, dict(base, num_predict=30), "logprobs"),
        (repetitive, dict(base, repeat_penalty=1.2, repeat_last_n=8), None),
        (repetitive, dict(base, draft_num_predict=0), None),
    ]


def submit(model, prompt, opts, kind):
    params = GenerationParams(
        prompt=tuple(prompt),
        options=Options(**opts),
        grammar="even" if kind == "even" else None,
        logprobs=kind == "logprobs",
        top_logprobs=2 if kind == "logprobs" else 0,
    )
    grammar = EvenOnly() if kind == "even" else None
    sampler = SequenceSampler(
        params.options, model.runner.vocab_info, grammar=grammar, n_ctx=model.n_ctx_seq
    )
    return model.runner.submit(params, sampler)


async def run_mixed(script, *, speculative, check_cells=False, num_batch=512):
    async with fake_model(script, speculative=speculative, num_batch=num_batch) as model:
        runner = model.runner
        if check_cells:

            def on_decode(entries):
                for entry in entries:
                    slot = runner.scheduler.slots[entry.seq_id]
                    # the cache holds exactly what the scheduler says: no rejected draft left
                    assert model.fake.tokens(entry.seq_id) == slot.cached
                    gen = slot.request
                    if entry.tokens[0] == slot.next_token and gen.generated:
                        # ... which is the prompt and every emitted token but the last
                        assert slot.cached == list(gen.prompt) + gen.generated[:-1]

            model.fake.on_decode = on_decode
        gens = [submit(model, *request) for request in mixed_requests()]
        results = [await read_all(gen) for gen in gens]
        logprobs = [len(gen.collector._logprobs) for gen in gens]
        await trio.testing.wait_all_tasks_blocked()
        return results, (runner.n_drafted, runner.n_accepted), model.fake, logprobs


async def test_greedy_and_seeded_output_is_identical_with_speculation_across_8_sequences():
    plain, (n_drafted, _), _, _ = await run_mixed(copy_with_edits, speculative=False)
    assert n_drafted == 0
    fast, (n_drafted, n_accepted), fake, _ = await run_mixed(
        copy_with_edits, speculative=True, check_cells=True
    )
    assert n_drafted > n_accepted > 0  # drafts were accepted and rejected
    for (text_a, ids_a, last_a), (text_b, ids_b, last_b) in zip(plain, fast, strict=True):
        assert text_a == text_b and ids_a == ids_b
        assert last_a.done_reason == last_b.done_reason
        assert last_a.eval_count == last_b.eval_count and last_a.context == last_b.context
        assert last_a.stop_sequence == last_b.stop_sequence
    assert plain[3][2].stop_sequence == "24 25 20"  # the stop string case did stop
    assert set(plain[2][1]) <= set(range(0, 64, 2))  # the grammar held


async def test_speculation_saves_decodes_and_logprobs_come_for_every_token():
    async with fake_model(copy_with_edits, speculative=False) as model:
        prompt, opts, _ = mixed_requests()[0]
        await read_all(submit(model, prompt, opts, None))
        plain_decodes = model.fake.n_decodes
    async with fake_model(copy_with_edits) as model:
        _, _, last = await read_all(submit(model, prompt, opts, None))
        assert last.eval_count == 40
        assert model.fake.n_decodes < plain_decodes / 2
        prompt, opts, _ = mixed_requests()[5]
        gen = submit(model, prompt, opts, "logprobs")
        logprobs = []
        while not gen.done:
            for chunk in await gen.collector.take():
                logprobs.extend(chunk.logprobs)
        assert [lp.token_id for lp in logprobs] == list(gen.generated)
        assert all(len(lp.top_logprobs) == 2 for lp in logprobs)


async def test_kv_cells_hold_exactly_the_accepted_tokens_in_a_tight_batch():
    # 8 generating sequences and a 16-token batch: drafts get the 8 tokens left at most
    _, (n_drafted, n_accepted), fake, _ = await run_mixed(
        copy_with_edits, speculative=True, check_cells=True, num_batch=16
    )
    assert n_drafted > n_accepted > 0


async def test_drafts_that_always_fail_are_soon_stopped_and_output_is_unchanged():
    request = ([BOS] + PATTERN * 3, dict(temperature=0.0, repeat_penalty=1.0, num_predict=200))
    async with fake_model(contrary, speculative=False) as model:
        plain = await read_all(submit(model, *request, None))
    async with fake_model(contrary, num_ctx=512) as model:
        model.runner.token_cost = 0.5  # the prior: a draft costs a third of a solo step
        sizes = []
        model.fake.on_decode = lambda entries: sizes.extend(len(e.tokens) for e in entries)
        fast = await read_all(submit(model, *request, None))
        runner = model.runner
    assert fast[:2] == plain[:2]
    assert runner.n_accepted == 0 and runner.n_drafted > 0
    # the estimate soon makes k zero; then a one-token probe every 32 steps
    assert runner.n_drafted <= 10 + 200 // 32
    assert max(sizes[-32:]) <= 2


async def test_drafts_grow_to_draft_num_predict_when_they_keep_being_accepted():
    async with fake_model(counting) as model:
        sizes = []
        model.fake.on_decode = lambda entries: sizes.extend(len(e.tokens) for e in entries)
        # the model counts, and the prompt already holds what comes after 2 3 4
        prompt = [BOS] + list(range(2, 50)) + [2, 3, 4]
        options = dict(temperature=0.0, repeat_penalty=1.0, num_predict=40, draft_num_predict=5)
        text, ids, last = await read_all(submit(model, prompt, options, None))
        assert ids == tuple(range(5, 45))
        assert model.runner.n_accepted == model.runner.n_drafted > 0
    assert max(sizes[1:]) == 6  # after the prompt: the next token and 5 drafts


async def test_draft_num_predict_0_and_the_setting_turn_speculation_off():
    request = ([BOS] + PATTERN * 4, dict(temperature=0.0, repeat_penalty=1.0, num_predict=30))
    async with fake_model(copy_with_edits) as model:
        await read_all(submit(model, request[0], dict(request[1], draft_num_predict=0), None))
        assert model.runner.n_drafted == 0
    async with fake_model(copy_with_edits, speculative=False) as model:
        await read_all(submit(model, *request, None))
        assert model.runner.n_drafted == 0


# ---------------------------------------------------------------- DRAFT models


class DraftBackend(FakeBackend):
    """Opens the target and, for a path naming it, a draft model: `fake` (the same model),
    `small-vocab` (another vocabulary)."""

    def open(self, spec):
        model, context = super().open(spec)
        if spec.model_path == "small-vocab":
            model.n_vocab = N_VOCAB - 1
        return model, context


@contextlib.asynccontextmanager
async def drafted_model(script, draft_path="fake", **extra):
    backend = DraftBackend(script=script)
    spec = LoadSpec(model_path="fake", num_ctx=256, num_parallel=8, draft_path=draft_path, **extra)
    loaded = await LoadedModel.open(spec, backend=backend, run_sync=Worker())
    loaded.fake = backend.opened[0][2]
    loaded.runner.token_cost = TOKEN_COST
    loaded.draft_fake = backend.opened[1][2]
    async with running(loaded):
        yield loaded
    assert loaded.draft_fake.closed


async def test_a_draft_model_that_is_the_model_itself_is_always_right():
    plain, _, _, _ = await run_mixed(copy_with_edits, speculative=False)
    async with drafted_model(copy_with_edits) as model:
        runner = model.runner
        gens = [submit(model, *request) for request in mixed_requests()]
        results = [await read_all(gen) for gen in gens]
        for (text_a, ids_a, last_a), (text_b, ids_b, last_b) in zip(plain, results, strict=True):
            assert text_a == text_b and ids_a == ids_b and last_a.context == last_b.context
        assert runner.n_drafted > 0
        # only the grammar, sampling and penalties may reject what the bare model proposes
        solo = submit(model, *mixed_requests()[0])
        before = (runner.n_drafted, runner.n_accepted)
        await read_all(solo)
        assert runner.n_drafted - before[0] == runner.n_accepted - before[1] > 0
        await trio.testing.wait_all_tasks_blocked()
        # the draft sequence mirrors the target's cells (and its last draft tokens)
        drafter = model.drafter
        for seq, cells in drafter.cached.items():
            assert model.draft_fake.tokens(seq) == cells


async def test_a_draft_model_with_another_vocabulary_is_refused_with_400():
    backend = DraftBackend()
    spec = LoadSpec(model_path="fake", num_ctx=64, num_parallel=2, draft_path="small-vocab")
    with pytest.raises(EngineError, match="vocabulary differs") as info:
        await LoadedModel.open(spec, backend=backend, run_sync=Worker())
    assert info.value.status == 400
    assert all(context.closed for _, _, context in backend.opened)
    assert all(model.closed for _, model, _ in backend.opened)
