"""One request's engine-side state: its lifecycle, its sampler, its output mailbox.

Generation lifecycle (`GenerationState`, checked by `Generation._move`)::

    QUEUED --admit--> PREFILLING --last prompt chunk decoded--> GENERATING --> FINISHED
      |                  |                                         |
      +------------------+-----------------------------------------+--> CANCELLED
      +------------------+-----------------------------------------+--> FAILED

- QUEUED: submitted, waiting for a free slot (in the scheduler's FIFO).
- PREFILLING: holds a slot; prompt chunks are being evaluated.
- GENERATING: its prompt is in the KV cache; one token per step.
- FINISHED: an end-of-generation token, a stop string, num_predict or a full context; the final
  chunk is in the collector.
- CANCELLED: its consumer went away (`Runner.cancel`); a queued one is withdrawn at once, one
  holding a slot is released by the loop at its next step boundary (`cancel_requested`).
- FAILED: its sampler, detokeniser or stop matcher raised, its batch's decode failed, or the
  model was unloaded; the error is in the collector.

The three terminal states close the sampler (freeing a grammar's C object) exactly once. The
runner owns the slot and the KV cells: it releases them when it moves a generation out of
PREFILLING or GENERATING.
"""

from __future__ import annotations

import enum
from typing import Any

import trio

from power.engine.lifecycle import check_transition
from power.engine.sampling import SequenceSampler
from power.engine.textstream import StopMatcher, Utf8Accumulator
from power.engine.types import Chunk, EngineError, GenerationParams, TokenLogprob


class GenerationState(enum.Enum):
    QUEUED = "queued"
    PREFILLING = "prefilling"
    GENERATING = "generating"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


_S = GenerationState
TERMINAL = frozenset({_S.FINISHED, _S.CANCELLED, _S.FAILED})
TRANSITIONS: dict[GenerationState, frozenset[GenerationState]] = {
    _S.QUEUED: frozenset({_S.PREFILLING, _S.CANCELLED, _S.FAILED}),
    _S.PREFILLING: frozenset({_S.GENERATING, _S.CANCELLED, _S.FAILED}),
    _S.GENERATING: frozenset({_S.FINISHED, _S.CANCELLED, _S.FAILED}),
}


class Collector:
    """The per-request mailbox between the loop (producer) and one consumer.

    `push`/`finish`/`fail` never block (the loop never awaits a consumer); what arrives while
    the reader is slow is merged. `take` waits until something arrived and returns the merged
    text since the last take (one `Chunk`), followed by the final chunk once finished; after a
    `fail`, pending text is returned first and the next `take` raises the error at once. After
    the final chunk or the error, nothing more is accepted and `take` raises EngineError.
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []
        self._final: Chunk | None = None
        self._error: BaseException | None = None
        self._event = trio.Event()
        self.closed = False  # the final chunk or the error has been taken

    @property
    def ended(self) -> bool:
        """finish() or fail() was called."""
        return self._final is not None or self._error is not None

    def push(self, text: str, token: int | None, logprob: TokenLogprob | None) -> None:
        if self.ended:
            return
        if text:
            self._text.append(text)
        if token is not None:
            self._ids.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        self._event.set()

    def finish(self, final: Chunk) -> None:
        if not self.ended:
            self._final = final
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self.ended:
            self._error = error
            self._event.set()

    async def take(self) -> list[Chunk]:
        if self.closed:
            raise EngineError("the generation is over")
        await self._event.wait()
        # One more turn of the scheduler before the reader formats and writes what arrived:
        # the loop that pushed it is then already decoding its next step (it starts that in
        # the same turn as this wake-up), so the readers' work (JSON, HTTP writes: 8 readers
        # of one step add up) runs beside the decode instead of delaying its start.
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._event = trio.Event()
        out: list[Chunk] = []
        if self._text or self._ids or self._logprobs:
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
                self._event.set()  # the error is still pending: the next take raises at once
                return out
            self.closed = True
            raise self._error
        if self._final is not None:
            out.append(self._final)
            self.closed = True
        return out


class Generation:
    """The engine-side state of one request (owned by the runner's loop once submitted)."""

    def __init__(
        self,
        params: GenerationParams,
        sampler: SequenceSampler,
        truncated: bool,
        prompt: list[int] | None = None,
    ) -> None:
        self.params = params
        self.prompt = list(params.prompt) if prompt is None else prompt
        self.sampler = sampler
        self.truncated = truncated
        self.state = GenerationState.QUEUED
        #: the consumer went away while the generation held a slot: the loop releases it
        self.cancel_requested = False
        self.error: BaseException | None = None
        self.collector = Collector()
        self.utf8 = Utf8Accumulator()
        self.stops = StopMatcher(list(params.options.stop))
        self.generated: list[int] = []
        self.slot: Any = None
        options = params.options
        #: mirostat, tail-free, typical and grammars sample in a nursery of their own threads
        self.costly = (
            options.temperature > 0
            and (options.mirostat in (1, 2) or options.tfs_z < 1.0 or options.typical_p < 1.0)
        ) or params.grammar is not None
        #: the sequence's draftless speculation (`power.engine.speculative.PromptLookup`), set by
        #: the runner when it speculates for this request; None: one token per step
        self.speculation: Any = None
        self.n_prompt_evaluated = 0
        self.t_prompt_start = 0
        self.t_prompt_end = 0

    def __repr__(self) -> str:
        return f"<Generation {self.state.name} prompt={len(self.prompt)} out={len(self.generated)}>"

    # ------------------------------------------------------------------ lifecycle
    def _move(self, to: GenerationState) -> None:
        check_transition("generation", TRANSITIONS, self.state, to)
        self.state = to
        if to in TERMINAL:
            self.slot = None
            self._close_sampler()

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def cancelled(self) -> bool:
        return self.state is GenerationState.CANCELLED or self.cancel_requested

    @property
    def holds_slot(self) -> bool:
        return self.state in (GenerationState.PREFILLING, GenerationState.GENERATING)

    def admitted(self, slot: Any) -> None:
        self._move(GenerationState.PREFILLING)
        self.slot = slot

    def prompt_done(self) -> None:
        self._move(GenerationState.GENERATING)

    def finish(self, final: Chunk) -> None:
        self._move(GenerationState.FINISHED)
        self.collector.finish(final)

    def fail(self, error: BaseException) -> None:
        self._move(GenerationState.FAILED)
        self.error = error
        self.collector.fail(error)

    def cancel(self) -> None:
        self._move(GenerationState.CANCELLED)
        self.collector.fail(EngineError("generation cancelled", status=499))

    def _close_sampler(self) -> None:
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()
