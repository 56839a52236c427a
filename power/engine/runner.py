"""The step loop of one loaded model: token-level continuous batching on one llama.cpp context.

One trio task (`Runner.run`) owns the loop. Each step it admits waiting requests into free slots,
shifts full contexts, plans one batch (a token per generating sequence, then prompt chunks),
runs `llama_decode` plus sampling in a worker thread (`trio.to_thread.run_sync` under the model's
`CapacityLimiter(1)`, never abandoned: the thread owns the context while it runs), and commits:
each sampled token becomes text, passes the stop matcher and lands in its request's `Collector`.

The loop never awaits a consumer. A `Collector` merges what arrives while its reader is slow.
Cancellation: `Runner.cancel(generation)` only sets a flag (safe from any task); the loop
releases the slot and frees its KV cells at the next step boundary.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import trio

from power.engine.llama import Batch, LlamaContext, LlamaModel
from power.engine.sampling import SequenceSampler, VocabInfo
from power.engine.scheduler import Scheduler, Slot, SlotState, StepPlan
from power.engine.textstream import StopMatcher, Utf8Accumulator
from power.engine.types import (
    Chunk,
    DoneReason,
    EngineError,
    GenerationParams,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger(__name__)


class DecodeError(EngineError):
    """llama_decode refused a batch (bad token ids, no room in the KV cache...)."""


class Collector:
    """The per-request mailbox between the loop (producer) and one consumer.

    `push`/`finish`/`fail` never block; `take` waits until something arrived and returns the
    merged text since the last take (one `Chunk`), followed by the final chunk once done.
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []
        self._final: Chunk | None = None
        self._error: BaseException | None = None
        self._event = trio.Event()
        self.closed = False

    def push(self, text: str, token: int | None, logprob: TokenLogprob | None) -> None:
        if text:
            self._text.append(text)
        if token is not None:
            self._ids.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        self._event.set()

    def finish(self, final: Chunk) -> None:
        self._final = final
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    async def take(self) -> list[Chunk]:
        await self._event.wait()
        self._event = trio.Event()
        out: list[Chunk] = []
        if self._text or self._ids:
            out.append(
                Chunk(
                    text="".join(self._text),
                    token_ids=tuple(self._ids),
                    logprobs=tuple(self._logprobs),
                )
            )
            self._text, self._ids, self._logprobs = [], [], []
        if self._error is not None:
            if out:
                return out  # deliver the text first; the error comes at the next take
            self.closed = True
            raise self._error
        if self._final is not None:
            out.append(self._final)
            self.closed = True
        return out


class Generation:
    """The engine-side state of one request (owned by the loop once submitted)."""

    def __init__(self, params: GenerationParams, sampler: SequenceSampler, truncated: bool) -> None:
        self.params = params
        self.prompt = list(params.prompt)
        self.sampler = sampler
        self.truncated = truncated
        self.collector = Collector()
        self.utf8 = Utf8Accumulator()
        self.stops = StopMatcher(list(params.options.stop))
        self.generated: list[int] = []
        self.cancelled = False
        self.done = False
        self.slot: Slot | None = None
        options = params.options
        #: mirostat, tail-free, typical and grammars sample in a nursery of their own threads
        self.costly = (
            options.temperature > 0
            and (options.mirostat in (1, 2) or options.tfs_z < 1.0 or options.typical_p < 1.0)
        ) or params.grammar is not None
        self.n_prompt_evaluated = 0
        self.t_prompt_start = 0
        self.t_prompt_end = 0

    def close_sampler(self) -> None:
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()


class Runner:
    """Continuous batching over one context. Create, then `nursery.start(runner.run)`."""

    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        *,
        n_slots: int,
        n_ctx_seq: int,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.model = model
        self.context = context
        self.n_ctx_seq = n_ctx_seq
        self.scheduler = Scheduler(n_slots, n_ctx_seq, context.n_batch)
        self.batch = Batch(context.n_batch, 1)
        self.limiter = limiter or trio.CapacityLimiter(1)
        self.sampling_limiter = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._wake = trio.Event()
        self.broken: BaseException | None = None
        nl = -1
        try:
            import llama_cpp

            nl = llama_cpp.llama_vocab_nl(model.vocab)
        except Exception:  # noqa: BLE001
            pass
        self.vocab_info = VocabInfo(
            n_vocab=model.n_vocab,
            newline_ids=[nl] if nl >= 0 else [],
            eog_ids=list(model.eog_ids),
        )
        self.n_steps = 0

    # ------------------------------------------------------------------ public, any task
    @property
    def n_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def n_active(self) -> int:
        return self.scheduler.n_active

    def submit(self, params: GenerationParams, sampler: SequenceSampler) -> Generation:
        """Queue a generation; the prompt is truncated (or refused) to fit one sequence."""
        if self.broken is not None:
            raise EngineError(f"model runner stopped: {self.broken}")
        prompt = list(params.prompt)
        if not prompt:
            raise EngineError("empty prompt", status=400)
        truncated = False
        limit = self.n_ctx_seq - 1
        if len(prompt) > limit:
            if not params.truncate:
                raise EngineError(
                    f"input length ({len(prompt)} tokens) exceeds the context length "
                    f"({self.n_ctx_seq} tokens)",
                    status=400,
                )
            n_keep = max(0, min(params.options.num_keep, limit // 2))
            if self.model.add_bos and prompt[0] == self.model.bos:
                n_keep = max(n_keep, 1)
            prompt = prompt[:n_keep] + prompt[len(prompt) - (limit - n_keep) :]
            truncated = True
            log.warning("prompt truncated to %d tokens (num_ctx %d)", len(prompt), self.n_ctx_seq)
        generation = Generation(params, sampler, truncated)
        generation.prompt = prompt
        sampler.observe(prompt)  # repeat penalties look back into the prompt, as llama.cpp does
        self.scheduler.submit(generation)
        self._wake.set()
        return generation

    def cancel(self, generation: Generation) -> None:
        """Stop a generation (its consumer went away). Frees its slot at the next step."""
        if generation.done or generation.cancelled:
            return
        generation.cancelled = True
        if self.scheduler.withdraw(generation):
            generation.done = True
            generation.close_sampler()
        self._wake.set()

    # ------------------------------------------------------------------ the loop
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self._reap_cancelled()
                if not self.scheduler.has_work():
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                self._admit()
                self._shift()
                plan = self.scheduler.plan()
                if not plan.entries:
                    await trio.sleep(0)
                    continue
                try:
                    sampled, costly = await trio.to_thread.run_sync(
                        self._execute, plan, limiter=self.limiter
                    )
                except DecodeError as exc:
                    self._fail_plan(plan, exc)
                    continue
                if costly:
                    await self._sample_costly(costly, sampled)
                self._commit(plan, sampled)
                self.n_steps += 1
        except Exception as exc:  # the loop must never take the server down with it
            log.exception("model runner failed")
            self.broken = exc
            self._fail_all(EngineError(f"model runner failed: {exc}"))
        finally:
            self._fail_all(EngineError("model unloaded"))

    def _fail_all(self, error: BaseException) -> None:
        for slot in self.scheduler.slots:
            gen: Generation | None = slot.request
            if gen is not None and not gen.done:
                gen.done = True
                gen.collector.fail(error)
                gen.close_sampler()
                self.scheduler.release(slot)
        while self.scheduler.waiting:
            gen = self.scheduler.waiting.popleft()
            gen.done = True
            gen.collector.fail(error)

    def _fail_plan(self, plan: StepPlan, error: DecodeError) -> None:
        """A decode failed: fail the sequences of that batch only, drop their cells, go on."""
        log.error("%s; failing the sequences of that batch", error)
        for slot in {id(e.slot): e.slot for e in plan.entries}.values():
            gen: Generation | None = slot.request
            if gen is not None and not gen.done:
                gen.done = True
                gen.collector.fail(EngineError(str(error)))
                gen.close_sampler()
            self.scheduler.release(slot)
            self.context.seq_rm(slot.seq_id, -1, -1)
            self.scheduler.forget(slot)

    def _reap_cancelled(self) -> None:
        for slot in self.scheduler.slots:
            gen: Generation | None = slot.request
            if gen is not None and gen.cancelled:
                gen.done = True
                gen.close_sampler()
                self.scheduler.release(slot)
                self.context.seq_rm(slot.seq_id, -1, -1)
                self.scheduler.forget(slot)

    def _admit(self) -> None:
        now = time.perf_counter_ns()
        for admission in self.scheduler.admit():
            slot = admission.slot
            gen: Generation = admission.request
            gen.slot = slot
            gen.t_prompt_start = now
            if admission.copy_from is not None:
                self.context.seq_rm(slot.seq_id, -1, -1)
                self.context.seq_cp(admission.copy_from, slot.seq_id, 0, admission.n_reuse)
            elif not self.context.seq_rm(slot.seq_id, admission.n_reuse, -1):
                # the cache cannot drop a partial range (e.g. sliding window): start afresh
                self.context.seq_rm(slot.seq_id, -1, -1)
                slot.cached = []
                slot.pending = list(gen.prompt)
            gen.n_prompt_evaluated = len(slot.pending)

    def _shift(self) -> None:
        def policy(slot: Slot) -> tuple[bool, int]:
            gen: Generation = slot.request
            return (gen.params.shift and self.context.can_shift), gen.params.options.num_keep

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

    def _execute(
        self, plan: StepPlan
    ) -> tuple[dict[int, tuple[int, TokenLogprob | None]], list[tuple[Slot, int]]]:
        """Worker thread: decode the plan and sample, right here, every slot whose logits came
        out and whose sampler is cheap. Returns those tokens and the (slot, row) pairs left for
        `_sample_costly` (mirostat, tail-free, typical, grammar)."""
        batch = self.batch
        batch.clear()
        rows: list[tuple[Slot, int]] = []
        for entry in plan.entries:
            row = batch.add(entry.slot.seq_id, entry.tokens, entry.start_pos, entry.wants_logits)
            if entry.wants_logits:
                rows.append((entry.slot, row))
        status = self.context.decode(batch)
        if status != 0:
            raise DecodeError(f"llama_decode failed with status {status}")
        sampled: dict[int, tuple[int, TokenLogprob | None]] = {}
        costly: list[tuple[Slot, int]] = []
        for slot, row in rows:
            gen: Generation = slot.request
            if gen is None or gen.cancelled or gen.done:
                continue
            if gen.costly:
                costly.append((slot, row))
                continue
            sampled[slot.seq_id] = self._sample_one(gen, row)
        return sampled, costly

    def _sample_one(self, gen: Generation, row: int) -> tuple[int, TokenLogprob | None]:
        logits = self.context.logits_row(row)
        token = gen.sampler.sample(logits)
        gen.sampler.accept(token)
        logprob = self._logprob(gen, logits, token) if gen.params.logprobs else None
        return token, logprob

    async def _sample_costly(
        self, costly: list[tuple[Slot, int]], sampled: dict[int, tuple[int, TokenLogprob | None]]
    ) -> None:
        """Custom samplers run per sequence in a nursery, each in a worker thread (numpy releases
        the GIL in its heavy loops, so they share the cores). The logits rows stay valid: no
        decode can start before this nursery has finished."""

        async def one(slot: Slot, row: int) -> None:
            gen: Generation = slot.request
            sampled[slot.seq_id] = await trio.to_thread.run_sync(
                self._sample_one, gen, row, limiter=self.sampling_limiter
            )

        async with trio.open_nursery() as nursery:
            for slot, row in costly:
                nursery.start_soon(one, slot, row)

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

    def _commit(self, plan: StepPlan, sampled: dict[int, tuple[int, TokenLogprob | None]]) -> None:
        now = time.perf_counter_ns()
        next_tokens: dict[int, int | None] = {}
        for seq, (token, _) in sampled.items():
            next_tokens[seq] = token
        self.scheduler.commit(plan, next_tokens)
        for entry in plan.entries:
            if not entry.wants_logits:
                continue
            slot = entry.slot
            gen: Generation | None = slot.request
            if gen is None or gen.done:
                continue
            result = sampled.get(slot.seq_id)
            if result is None:
                continue
            token, logprob = result
            if not gen.generated and gen.t_prompt_end == 0:
                gen.t_prompt_end = now
            self._on_token(slot, gen, token, logprob)

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
        now = time.perf_counter_ns()
        if not stopped:
            tail = gen.utf8.flush()
            emit, hit = gen.stops.feed(tail) if tail else ("", False)
            if not hit:
                emit += gen.stops.flush()
            if emit:
                gen.collector.push(emit, None, None)
        t_prompt_end = gen.t_prompt_end or now
        gen.done = True
        gen.collector.finish(
            Chunk(
                done=True,
                done_reason=reason,
                prompt_eval_count=gen.n_prompt_evaluated,
                prompt_eval_duration=max(0, t_prompt_end - gen.t_prompt_start),
                eval_count=len(gen.generated),
                eval_duration=max(0, now - t_prompt_end),
                context=tuple(gen.prompt) + tuple(gen.generated),
                truncated=gen.truncated,
                stop_sequence=gen.stops.matched,
            )
        )
        gen.close_sampler()
        self.scheduler.release(slot)
        if slot.state is SlotState.IDLE and slot.n_past > self.n_ctx_seq:
            self.context.seq_rm(slot.seq_id, -1, -1)
            self.scheduler.forget(slot)
