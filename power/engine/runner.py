"""The step loop of one loaded model: token-level continuous batching on one context.

One trio task (`Runner.run`) owns the loop. Each step it admits waiting requests into free slots,
shifts full contexts, plans one batch (a token per generating sequence, then prompt chunks),
decodes it and samples in a worker thread (`run_sync`, `trio.to_thread.run_sync` under the
model's `CapacityLimiter(1)` in production, never abandoned: the thread owns the context while
it runs), and commits: each sampled token becomes text, passes the stop matcher and lands in its
request's `Collector`. The backend (`power.engine.backend`) and the worker runner are injected,
so the loop runs on the CPU with a fake backend in tests.

The loop never awaits a consumer. A `Collector` merges what arrives while its reader is slow.

Speculative decoding (`power.engine.speculative`): before planning, each generating sequence
that speculates gets draft tokens (prompt lookup, or the `Drafter` of a DRAFT model in one worker
call); the plan appends them to its next token in the room the batch has left, the worker
thread verifies them row by row with the sequence's sampler, and the commit emits every
accepted token and removes the cells of the rejected ones.

Images (`power.engine.multimodal`): when a prompting sequence reaches an image, the loop runs an
image step before the text step: one worker call encodes that image with the model's
`Projector` and evaluates its embeddings alone in the sequence's cells (sampling at once if the
image ends the prompt). Text chunks and the other sequences go on in the text step that follows.

Errors stay with their sequence: an exception while sampling, detokenising or matching stops
fails that one generation (`SamplingError`, an `EngineError`) and the others go on; a failed
decode fails the sequences of that batch only (their KV cells are dropped). Only an error in the
loop's own bookkeeping or in a KV-cache operation, or a `ContextLost` from the decode (the context
is then unusable: a split model's host process died), stops the loop: `broken` is set, every
generation fails with "model runner failed: <why>", and the model manager marks the instance
FAILED and forgets it so that the next request reloads it.

Cancellation: `Runner.cancel(generation)` is safe from any task; a queued generation is withdrawn
at once, one holding a slot is released (and its KV cells freed) at the next step boundary.
Cancelling `run` itself (an unload) waits for the step in the worker thread, then fails every
generation with "model unloaded"; the caller then closes the context.

Persistent prompt cache (`power.engine.promptcache`, `power.engine.slotcache`): with a
`PromptCache` and the model's key, admission saves the cells it is about to drop and restores
saved cells of a longer prefix of the new prompt (both in worker calls under the context's
limiter, between steps); `save_prompt_cache` saves every slot at unload.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from power.engine.backend import BatchEntry, Context, Projector, Vocabulary, WorkerRunner
from power.engine.drafter import Drafter, DraftRequest
from power.engine.generation import Collector, Generation, GenerationState
from power.engine.multimodal import check_prompt, fit_prompt, text_tokens
from power.engine.promptcache import PromptCache
from power.engine.sampling import SequenceSampler, VocabInfo
from power.engine.scheduler import Admission, Scheduler, Slot, SlotState, StepPlan
from power.engine.slotcache import SlotPersistence, supports_state
from power.engine.speculative import (
    DraftPolicy,
    LinearCosts,
    PromptLookup,
    StepCosts,
    matched_prefix,
    verify,
)
from power.engine.types import (
    Chunk,
    ContextLost,
    DecodeError,
    DoneReason,
    EngineError,
    GenerationParams,
    SamplingError,
    TokenLogprob,
    TopLogprob,
)

__all__ = ["Collector", "DecodeError", "Generation", "Runner"]

log = logging.getLogger(__name__)

#: What a sequence's sampling produced in a step: its emitted (token, logprob) pairs (one, or
#: more when draft tokens were accepted), or the error it raised.
Sampled = dict[int, "list[tuple[int, TokenLogprob | None]] | BaseException"]
#: A sequence whose logits came out of a decode: (slot, its first row, its draft tokens).
Rows = list[tuple[Slot, int, list[int]]]


class Runner:
    """Continuous batching over one context. Create, then `nursery.start(runner.run)`."""

    def __init__(
        self,
        model: Vocabulary,
        context: Context,
        *,
        n_slots: int,
        n_ctx_seq: int,
        limiter: trio.CapacityLimiter | None = None,
        run_sync: WorkerRunner | None = None,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        projector: Projector | None = None,
        prompt_cache: PromptCache | None = None,
        cache_key: str | None = None,
        speculative: bool = True,
        token_cost: float | None = None,
        drafter: Drafter | None = None,
    ) -> None:
        """`speculative`: speculative decoding (see `power.engine.speculative`) for requests
        whose `draft_num_predict` is above 0, with drafts from `drafter` (a DRAFT model) when
        given, else from prompt lookup; `token_cost`: what one more token in a batch costs
        relative to a step's fixed part (`power.engine.speculative.LinearCosts`), for the
        adaptive draft length; None: step times measured by batch size on the generation steps
        (`power.engine.speculative.StepCosts`)."""
        self.model = model
        self.drafter = drafter
        self.speculative = speculative
        self.step_costs: StepCosts | LinearCosts = StepCosts()
        self.token_cost = token_cost
        #: draft tokens verified and accepted, over the runner's life (for metrics and benches)
        self.n_drafted = 0
        self.n_accepted = 0
        self.context = context
        self.projector = projector
        self.n_ctx_seq = n_ctx_seq
        self.scheduler = Scheduler(n_slots, n_ctx_seq, context.n_batch)
        self.limiter = limiter or trio.CapacityLimiter(1)
        self.sampling_limiter = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self.run_sync: WorkerRunner = run_sync or trio.to_thread.run_sync
        self.clock_ns = clock_ns
        self._wake = trio.Event()
        self.broken: BaseException | None = None
        self.vocab_info = VocabInfo(
            n_vocab=model.n_vocab,
            newline_ids=list(getattr(model, "newline_ids", ())),
            eog_ids=list(model.eog_ids),
        )
        self.n_steps = 0
        self.persistence: SlotPersistence | None = None
        if (
            prompt_cache is not None
            and prompt_cache.enabled
            and cache_key is not None
            and supports_state(context)
        ):
            self.persistence = SlotPersistence(
                prompt_cache, cache_key, context, limiter=self.limiter, run_sync=self.run_sync
            )

    # ------------------------------------------------------------------ public, any task
    @property
    def token_cost(self) -> float | None:
        """A fixed cost of one more token in a step (`LinearCosts`), or None: measured."""
        costs = self.step_costs
        return costs.token_cost if isinstance(costs, LinearCosts) else None

    @token_cost.setter
    def token_cost(self, value: float | None) -> None:
        self.step_costs = StepCosts() if value is None else LinearCosts(value)

    @property
    def n_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def n_active(self) -> int:
        return self.scheduler.n_active

    def submit(self, params: GenerationParams, sampler: SequenceSampler) -> Generation:
        """Queue a generation; the prompt is truncated (or refused) to fit one sequence.

        Raises EngineError (400) for an empty prompt, a token outside the vocabulary, or a
        prompt too long with `truncate=False`. The sampler belongs to the generation from here
        on (closed when it ends)."""
        if self.broken is not None:
            raise EngineError(f"model runner stopped: {self.broken}")
        prompt = list(params.prompt)
        if not prompt:
            raise EngineError("empty prompt", status=400)
        if params.images:
            if self.projector is None:
                raise EngineError("this model has no vision projector", status=400)
            check_prompt(
                prompt, {image.start_id: image for image in params.images}, self.model.n_vocab
            )
        elif min(prompt) < 0 or max(prompt) >= self.model.n_vocab:
            raise EngineError("prompt holds a token outside the vocabulary", status=400)
        truncated = False
        limit = max(1, self.n_ctx_seq - 1)  # room for at least one generated token
        if len(prompt) > limit:
            if not params.truncate:
                raise EngineError(
                    f"input length ({len(prompt)} tokens) exceeds the context length "
                    f"({self.n_ctx_seq} tokens)",
                    status=400,
                )
            num_keep = params.options.num_keep
            n_keep = limit // 2 if num_keep < 0 else max(0, min(num_keep, limit // 2))
            if self.model.add_bos and prompt[0] == self.model.bos:
                n_keep = max(n_keep, 1)
            prompt = fit_prompt(prompt, limit, n_keep)  # images stay whole (or go)
            truncated = True
            log.warning("prompt truncated to %d tokens (num_ctx %d)", len(prompt), self.n_ctx_seq)
        generation = Generation(params, sampler, truncated, prompt)
        max_draft = params.options.draft_num_predict
        if self.speculative and max_draft > 0:
            generation.speculation = PromptLookup(DraftPolicy(max_draft=max_draft))
        # repeat penalties look back into the prompt, as llama.cpp does (text only)
        sampler.observe(text_tokens(prompt) if params.images else prompt)
        self.scheduler.submit(generation)
        if self.persistence is not None:
            self.persistence.prefetch(generation, prompt, self.scheduler.slots)
        self._wake.set()
        return generation

    def cancel(self, generation: Generation) -> None:
        """Stop a generation (its consumer went away). Idempotent; a no-op once it has ended.

        A queued generation is CANCELLED at once; one holding a slot is marked, and the loop
        releases its slot and frees its KV cells at the next step boundary."""
        if generation.done or generation.cancel_requested:
            return
        if generation.state is GenerationState.QUEUED:
            if self.scheduler.withdraw(generation):
                generation.cancel()
                if self.persistence is not None:
                    self.persistence.forget(generation)
            return
        generation.cancel_requested = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self._reap_cancelled()
                if not self.scheduler.has_work():
                    await self._wait_for_work()
                    continue
                await self._admit()
                self._shift()
                image = self.scheduler.plan_image()
                if image is not None:  # evaluated alone, before the text step
                    await self._step(image, self._execute_image)
                plan = self.scheduler.plan(await self._drafts())
                if not plan.entries:
                    if image is None:
                        await self._wait_for_work()  # nothing decodable until something changes
                    continue
                await self._step(plan, self._execute)
        except Exception as exc:  # the loop must never take the server down with it
            log.exception("model runner failed")
            self.broken = exc
            self._fail_all(EngineError(f"model runner failed: {exc}"))
        finally:
            self._fail_all(EngineError("model unloaded"))

    async def _step(self, plan: StepPlan, execute: Callable[[StepPlan], Any]) -> None:
        """Decode `plan` with `execute` in the worker thread, sample, commit."""
        try:
            sampled, costly = await self.run_sync(execute, plan, limiter=self.limiter)
        except DecodeError as exc:
            self._fail_plan(plan, exc)
            return
        if costly:
            await self._sample_costly(costly, sampled)
        self._commit(plan, sampled)
        self.n_steps += 1

    async def _wait_for_work(self) -> None:
        self._wake = trio.Event()
        await self._wake.wait()

    # ------------------------------------------------------------------ ending generations
    def _release(self, slot: Slot, *, drop_cells: bool) -> None:
        self.scheduler.release(slot)
        if drop_cells:
            self.context.seq_rm(slot.seq_id, -1, -1)
            self.scheduler.forget(slot)

    def _fail_one(self, slot: Slot, error: BaseException) -> None:
        """One sequence's sampling, detokenising or stop matching raised: fail it alone."""
        gen: Generation = slot.request
        if not isinstance(error, EngineError):
            error = SamplingError(f"sampling failed: {type(error).__name__}: {error}")
        log.warning("sequence %d failed: %s", slot.seq_id, error)
        gen.fail(error)
        self._release(slot, drop_cells=True)

    def _fail_all(self, error: BaseException) -> None:
        for slot in self.scheduler.slots:
            gen: Generation | None = slot.request
            if gen is not None and not gen.done:
                gen.fail(error)
            if slot.state is not SlotState.IDLE:
                self.scheduler.release(slot)
        while self.scheduler.waiting:
            gen = self.scheduler.waiting.popleft()
            if not gen.done:
                gen.fail(error)
        if self.persistence is not None:
            self.persistence.forget_all()

    def _fail_plan(self, plan: StepPlan, error: DecodeError) -> None:
        """A decode failed: fail the sequences of that batch only, drop their cells, go on."""
        log.error("%s; failing the sequences of that batch", error)
        for slot in {id(e.slot): e.slot for e in plan.entries}.values():
            gen: Generation | None = slot.request
            if gen is not None and not gen.done:
                if gen.cancel_requested:
                    gen.cancel()
                else:
                    gen.fail(EngineError(str(error)))
            self._release(slot, drop_cells=True)

    def _reap_cancelled(self) -> None:
        for slot in self.scheduler.slots:
            gen: Generation | None = slot.request
            if gen is not None and gen.cancel_requested and not gen.done:
                gen.cancel()
                self._release(slot, drop_cells=True)

    # ------------------------------------------------------------------ planning
    async def _admit(self) -> None:
        persistence = self.persistence
        before = {s.seq_id: s.cached for s in self.scheduler.slots}  # admit replaces the lists
        exact = {s.seq_id: s.inexact_from is None for s in self.scheduler.slots}
        admissions = self.scheduler.admit()
        if not admissions:
            return
        now = self.clock_ns()
        for admission in admissions:
            gen: Generation = admission.request
            gen.admitted(admission.slot)  # before any await: a cancel now finds it admitted
            gen.t_prompt_start = now
        try:
            if persistence is not None:
                await persistence.save_evicted(admissions, before, exact)
        finally:  # even when cancelled: the cells must match what the scheduler now believes
            for admission in admissions:
                self._drop_for(admission)
        if persistence is not None:
            for admission in admissions:
                gen = admission.request
                if gen.cancel_requested or gen.done:
                    persistence.forget(gen)
                    continue
                if await persistence.restore(admission.slot, gen) is not None:
                    gen.n_prompt_evaluated = len(admission.slot.pending)

    def _drop_for(self, admission: Admission) -> None:
        """Make the admitted slot's cells what `admission` says: its first `n_reuse`."""
        slot = admission.slot
        gen: Generation = admission.request
        if admission.copy_from is not None:
            self.context.seq_rm(slot.seq_id, -1, -1)
            self.context.seq_cp(admission.copy_from, slot.seq_id, 0, admission.n_reuse)
        elif not self.context.seq_rm(slot.seq_id, admission.n_reuse, -1):
            # the cache cannot drop a partial range (e.g. sliding window): start afresh
            self.context.seq_rm(slot.seq_id, -1, -1)
            self.scheduler.forget(slot)
            slot.pending = list(gen.prompt)
        gen.n_prompt_evaluated = len(slot.pending)

    async def save_prompt_cache(self) -> int:
        """Save every slot's cells worth saving to the persistent prompt cache (after `run`
        has returned: an unload). Returns how many were saved; the caller bounds its time
        (cancellation stops between two slots). Nothing when the loop broke."""
        if self.persistence is None or self.broken is not None:
            return 0
        return await self.persistence.save_all(self.scheduler.slots)

    def _shift(self) -> None:
        def policy(slot: Slot) -> tuple[bool, int]:
            gen: Generation = slot.request
            options = gen.params.options
            # num_predict -2: fill the context, then stop
            allowed = gen.params.shift and self.context.can_shift and options.num_predict != -2
            n_keep = len(gen.prompt) if options.num_keep < 0 else options.num_keep
            return allowed, n_keep

        n_past_before = {s.seq_id: s.n_past for s in self.scheduler.slots}
        shifts, full = self.scheduler.shifts_needed(policy)
        for shift in shifts:
            seq = shift.slot.seq_id
            n_past = n_past_before[seq]
            start = shift.n_keep + shift.n_discard
            self.context.seq_rm(seq, shift.n_keep, start)
            self.context.seq_add(seq, start, n_past, -shift.n_discard)
        for slot in full:
            self._finish(slot, DoneReason.LENGTH)

    async def _drafts(self) -> dict[int, list[int]]:
        """Draft tokens for each generating sequence that speculates: a dict lookup each, or
        one call of the draft model in the worker thread for all of them."""
        drafts: dict[int, list[int]] = {}
        requests: list[DraftRequest] = []
        n_generating = sum(
            1
            for s in self.scheduler.slots
            if s.state is SlotState.GENERATING and s.next_token is not None
        )
        n_tokens = n_generating  # the step's tokens so far: a next token each, then drafts
        for slot in self.scheduler.slots:
            gen: Generation | None = slot.request
            if (
                slot.state is not SlotState.GENERATING
                or slot.next_token is None
                or gen is None
                or gen.speculation is None
                or gen.cancel_requested
            ):
                continue
            num_predict = gen.params.options.num_predict
            limit = self.n_ctx_seq - slot.n_past - 1
            if num_predict >= 0:  # drafts past num_predict would be dropped anyway
                limit = min(limit, num_predict - len(gen.generated) - 1)
            cost = self.step_costs.draft_costs(n_generating, n_tokens)
            if self.drafter is not None:
                k = min(gen.speculation.policy.next_k(cost), limit)
                if k > 0 and not gen.params.images:
                    requests.append(DraftRequest(slot.seq_id, [*slot.cached, slot.next_token], k))
                    n_tokens += k
                continue
            prompt = text_tokens(gen.prompt) if gen.params.images else gen.prompt
            draft = gen.speculation.propose(prompt, gen.generated, limit, cost)
            if draft:
                drafts[slot.seq_id] = draft
                n_tokens += len(draft)
        if requests and self.drafter is not None:
            try:
                proposed = await self.run_sync(self.drafter.propose, requests, limiter=self.limiter)
            except Exception as exc:  # noqa: BLE001 - the draft model failed: no drafts
                log.warning("draft model failed (%s); this step goes on without drafts", exc)
                return {}
            drafts.update({seq: draft for seq, draft in proposed.items() if draft})
        return drafts

    # ------------------------------------------------------------------ the worker thread
    def _execute(self, plan: StepPlan) -> tuple[Sampled, Rows]:
        """Worker thread: decode the plan and sample, right here, every slot whose logits came
        out and whose sampler is cheap. Returns those results (a token or the error its
        sampler raised) and the (slot, row) pairs left for `_sample_costly` (mirostat,
        tail-free, typical, grammar). Raises DecodeError when the batch is refused,
        ContextLost when the context is gone."""
        entries: list[BatchEntry] = []
        rows: Rows = []
        n_tokens = 0
        for entry in plan.entries:
            entries.append(
                BatchEntry(
                    entry.slot.seq_id,
                    entry.tokens,
                    entry.start_pos,
                    entry.wants_logits,
                    1 + entry.n_draft,
                )
            )
            n_tokens += len(entry.tokens)
            if entry.wants_logits:
                draft = entry.tokens[len(entry.tokens) - entry.n_draft :] if entry.n_draft else []
                rows.append((entry.slot, n_tokens - 1 - entry.n_draft, draft))
        t0 = time.perf_counter()
        try:
            self.context.decode_batch(entries)
        except (DecodeError, ContextLost):
            raise  # ContextLost: the context is gone, the loop stops (see `run`)
        except Exception as exc:  # noqa: BLE001 - the batch failed, not the context
            raise DecodeError(f"decode failed: {type(exc).__name__}: {exc}") from exc
        if all(e.wants_logits and len(e.tokens) == 1 + e.n_draft for e in plan.entries):
            # a generation step (no prompt chunk): what a token costs on this machine
            self.step_costs.observe(n_tokens, time.perf_counter() - t0)
        sampled: Sampled = {}
        costly: Rows = []
        for slot, row, draft in rows:
            gen: Generation | None = slot.request
            if gen is None or gen.cancel_requested or gen.done:
                continue
            if gen.costly:
                costly.append((slot, row, draft))
                continue
            sampled[slot.seq_id] = self._sample_guarded(gen, row, draft)
        return sampled, costly

    def _execute_image(self, plan: StepPlan) -> tuple[Sampled, Rows]:
        """Worker thread: encode the plan's one image and evaluate it in its sequence's cells;
        sample as `_execute` does when the image ends the prompt (its logits are row -1)."""
        (entry,) = plan.entries
        slot = entry.slot
        gen: Generation = slot.request
        image = next(i for i in gen.params.images if i.start_id == entry.tokens[0])
        assert self.projector is not None  # submit refused images without one
        try:
            batch = self.projector.encode(image.chunk, slot.seq_id, entry.start_pos)
            self.context.decode_embeddings(batch, entry.wants_logits)
        except DecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - this image failed, not the context
            raise DecodeError(f"image evaluation failed: {type(exc).__name__}: {exc}") from exc
        sampled: Sampled = {}
        costly: Rows = []
        if entry.wants_logits and not (gen.cancel_requested or gen.done):
            if gen.costly:
                costly.append((slot, -1, []))
            else:
                sampled[slot.seq_id] = self._sample_guarded(gen, -1, [])
        return sampled, costly

    def _sample_guarded(
        self, gen: Generation, row: int, draft: list[int]
    ) -> list[tuple[int, TokenLogprob | None]] | BaseException:
        """Sample the sequence's row `row`, then (while they match) the rows of its draft
        tokens (`power.engine.speculative.verify`); every emitted token goes through the
        sampler exactly as in plain decoding."""
        emitted: list[tuple[int, TokenLogprob | None]] = []
        num_predict = gen.params.options.num_predict
        n_before = len(gen.generated)

        def sample_row(i: int) -> int:
            emitted.append(self._sample_one(gen, row + i))
            return emitted[-1][0]

        def is_last(token: int, n_emitted: int) -> bool:
            return self.model.is_eog(token) or 0 <= num_predict <= n_before + n_emitted

        try:
            verify(sample_row, draft, is_last)
        except Exception as exc:  # noqa: BLE001 - stays with this sequence (see _fail_one)
            return exc
        return emitted

    def _sample_one(self, gen: Generation, row: int) -> tuple[int, TokenLogprob | None]:
        logits = self.context.logits_row(row)
        token = int(gen.sampler.sample(logits))
        if not 0 <= token < self.model.n_vocab:
            raise SamplingError(f"the sampler chose token {token}, outside the vocabulary")
        gen.sampler.accept(token)
        logprob = self._logprob(gen, logits, token) if gen.params.logprobs else None
        return token, logprob

    async def _sample_costly(self, costly: Rows, sampled: Sampled) -> None:
        """Custom samplers run per sequence in a nursery, each in a worker thread (numpy releases
        the GIL in its heavy loops, so they share the cores). The logits rows stay valid: no
        decode can start before this nursery has finished."""

        async def one(slot: Slot, row: int, draft: list[int]) -> None:
            gen: Generation = slot.request
            sampled[slot.seq_id] = await self.run_sync(
                self._sample_guarded, gen, row, draft, limiter=self.sampling_limiter
            )

        async with trio.open_nursery() as nursery:
            for slot, row, draft in costly:
                nursery.start_soon(one, slot, row, draft)

    def _logprob(self, gen: Generation, logits: Any, token: int) -> TokenLogprob:
        value, top = gen.sampler.logprobs(logits, token, gen.params.top_logprobs)
        piece = self.model.piece(token)
        return TokenLogprob(
            token=piece.decode("utf-8", "replace"),
            token_id=token,
            logprob=float(value),
            bytes=tuple(piece),
            top_logprobs=tuple(
                TopLogprob(
                    token=self.model.piece(t).decode("utf-8", "replace"),
                    token_id=int(t),
                    logprob=float(lp),
                    bytes=tuple(self.model.piece(t)),
                )
                for t, lp in top
            ),
        )

    # ------------------------------------------------------------------ committing a step
    def _commit(self, plan: StepPlan, sampled: Sampled) -> None:
        now = self.clock_ns()
        next_tokens: dict[int, int | None] = {}
        n_accepted: dict[int, int] = {}
        for seq, result in sampled.items():
            if isinstance(result, list):
                next_tokens[seq] = result[-1][0]
                n_accepted[seq] = len(result) - 1  # the tokens before the last were drafts
        for slot, position in self.scheduler.commit(plan, next_tokens, n_accepted):
            self.context.seq_rm(slot.seq_id, position, -1)  # rejected drafts
        for entry in plan.entries:
            if not entry.wants_logits:
                continue
            slot = entry.slot
            gen: Generation | None = slot.request
            if gen is None or gen.done:
                continue
            if gen.state is GenerationState.PREFILLING:
                gen.prompt_done()  # the last prompt chunk was decoded
            result = sampled.get(slot.seq_id)
            if result is None:
                continue  # cancelled during the step: reaped at the next one
            if isinstance(result, BaseException):
                self._fail_one(slot, result)
                continue
            if entry.n_draft:
                draft = entry.tokens[len(entry.tokens) - entry.n_draft :]
                n_matched = matched_prefix([token for token, _ in result], draft)
                self.n_drafted += entry.n_draft
                self.n_accepted += n_matched
                if gen.speculation is not None:
                    gen.speculation.record(entry.n_draft, n_matched)
            if not gen.generated and gen.t_prompt_end == 0:
                gen.t_prompt_end = now
            for token, logprob in result:
                try:
                    self._on_token(slot, gen, token, logprob)
                except Exception as exc:  # noqa: BLE001 - detokenising or stop matching failed
                    if not gen.done:
                        self._fail_one(slot, exc)
                if gen.done:
                    break  # a stop string, num_predict or an end: later tokens are dropped

    def _on_token(
        self, slot: Slot, gen: Generation, token: int, logprob: TokenLogprob | None
    ) -> None:
        if self.model.is_eog(token):
            slot.next_token = None
            self._finish(slot, DoneReason.STOP)
            return
        gen.generated.append(token)
        text = gen.utf8.feed(self.model.piece(token))
        emit, stopped = gen.stops.feed(text) if text else ("", False)
        gen.collector.push(emit, token, logprob)
        if stopped:
            slot.next_token = None
            self._finish(slot, DoneReason.STOP, stopped=True)
            return
        num_predict = gen.params.options.num_predict
        if num_predict >= 0 and len(gen.generated) >= num_predict:
            slot.next_token = None
            self._finish(slot, DoneReason.LENGTH)

    def _finish(self, slot: Slot, reason: DoneReason, *, stopped: bool = False) -> None:
        gen: Generation = slot.request
        now = self.clock_ns()
        if not stopped:
            tail = gen.utf8.flush()
            emit, hit = gen.stops.feed(tail) if tail else ("", False)
            if not hit:
                emit += gen.stops.flush()
            if emit:
                gen.collector.push(emit, None, None)
        t_prompt_end = gen.t_prompt_end or now
        gen.finish(
            Chunk(
                done=True,
                done_reason=reason,
                prompt_eval_count=len(gen.prompt),
                prompt_cached_count=len(gen.prompt) - gen.n_prompt_evaluated,
                prompt_eval_duration=max(0, t_prompt_end - gen.t_prompt_start),
                eval_count=len(gen.generated),
                eval_duration=max(0, now - t_prompt_end),
                context=tuple(text_tokens(gen.prompt) if gen.params.images else gen.prompt)
                + tuple(gen.generated),
                truncated=gen.truncated,
                stop_sequence=gen.stops.matched,
            )
        )
        self._release(slot, drop_cells=False)
        if slot.n_past > self.n_ctx_seq:
            self.context.seq_rm(slot.seq_id, -1, -1)
            self.scheduler.forget(slot)
