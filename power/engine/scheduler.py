"""The pure slot scheduler of one loaded model: admission, prompt cache, batch planning.

No trio, no ctypes: the step loop (`runner.py`) asks for a plan, executes it against llama.cpp,
then commits what came out. Tests drive it with hand-made results.

Slot lifecycle::

    IDLE --admit--> PROMPT --(last prompt chunk decoded)--> GENERATING --release--> IDLE
      ^               |                                         |
      +---release-----+ (cancelled before its first token)      +--(shift | finish)

An IDLE slot keeps the KV cells of its last sequence (`cached`): a new request whose prompt
starts with those tokens reuses them and evaluates only the rest (the prompt cache).

Images (`power.engine.multimodal`): a prompt's image is a run of placeholder ids. Reuse lengths
and context shifts never split one; `plan` stops a sequence's text chunk before its next image,
and `plan_image` hands out one image at a time, to be evaluated alone.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import attrs

from power.engine.multimodal import is_image_start, span_end, span_start, text_run


class SlotState(enum.Enum):
    IDLE = "idle"
    PROMPT = "prompt"
    GENERATING = "generating"


@attrs.define(eq=False)
class Slot:
    """One llama.cpp sequence id and what its KV cells hold."""

    seq_id: int
    state: SlotState = SlotState.IDLE
    cached: list[int] = attrs.field(factory=list)  # tokens whose KV cells are stored, by position
    pending: list[int] = attrs.field(factory=list)  # prompt tokens still to evaluate
    next_token: int | None = None  # sampled, to be fed at the next step
    request: Any = None
    last_used: int = 0
    #: cells from this position on were moved by a context shift: they are no longer what
    #: evaluating `cached` from scratch gives (None: all are); the persistent prompt cache
    #: (`power.engine.promptcache`) saves only exact cells
    inexact_from: int | None = None

    @property
    def n_past(self) -> int:
        return len(self.cached)


@attrs.frozen
class Admission:
    """A request got a slot. The runner must drop the slot's cells from `n_reuse` on, or, when
    `copy_from` is set, drop them all and share the first `n_reuse` cells of that sequence."""

    slot: Slot
    request: Any
    n_reuse: int
    copy_from: int | None = None


@attrs.frozen
class PlanEntry:
    """Tokens of one slot for one decode. A generating slot's entry is its next token followed
    by `n_draft` draft tokens (speculative decoding), with logits for each of them."""

    slot: Slot
    tokens: list[int]
    start_pos: int
    wants_logits: bool
    n_draft: int = 0


@attrs.frozen
class Shift:
    """Drop `n_discard` cells after the first `n_keep` of a full sequence, then slide the rest."""

    slot: Slot
    n_keep: int
    n_discard: int


@attrs.define
class StepPlan:
    entries: list[PlanEntry] = attrs.field(factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.entries)


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of `a` and `b`.

    Compares blocks by list slices (C speed) and only the first differing block element by
    element: an 8k-token prompt costs microseconds, not milliseconds, on the trio thread."""
    n = min(len(a), len(b))
    i = 0
    block = 256
    while i + block <= n and a[i : i + block] == b[i : i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    """Slots of one context, a FIFO of waiting requests, and the per-step plan.

    `n_ctx_seq` is the number of cells one sequence may hold; `n_batch` the tokens per decode.
    Requests are opaque objects with a `prompt` attribute (list of token ids).
    """

    def __init__(
        self, n_slots: int, n_ctx_seq: int, n_batch: int, *, min_shared_prefix: int = 16
    ) -> None:
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        #: copying another sequence's cells pays off only for a prefix at least this long
        self.min_shared_prefix = min_shared_prefix
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self.waiting: deque[Any] = deque()
        self._step = 0
        self._rotate = 0
        self._rotate_images = 0

    # ------------------------------------------------------------------ queries
    @property
    def n_active(self) -> int:
        return sum(1 for s in self.slots if s.state is not SlotState.IDLE)

    def has_work(self) -> bool:
        return bool(self.waiting) or any(
            s.state is SlotState.PROMPT
            or (s.state is SlotState.GENERATING and s.next_token is not None)
            for s in self.slots
        )

    # ------------------------------------------------------------------ admission
    def submit(self, request: Any) -> None:
        self.waiting.append(request)

    def withdraw(self, request: Any) -> bool:
        """Remove a request that has not got a slot yet."""
        try:
            self.waiting.remove(request)
        except ValueError:
            return False
        return True

    def admit(self) -> list[Admission]:
        """Give waiting requests (in order) the free slot that caches most of their prompt."""
        admitted: list[Admission] = []
        while self.waiting:
            free = [s for s in self.slots if s.state is SlotState.IDLE]
            if not free:
                break
            request = self.waiting.popleft()
            prompt: list[int] = request.prompt
            limit = max(len(prompt) - 1, 0)  # at least one token is evaluated, for logits
            best = max(free, key=lambda s: (common_prefix(s.cached, prompt), -s.last_used))
            # an image is reused whole or evaluated again whole
            n_reuse = span_start(prompt, min(common_prefix(best.cached, prompt), limit))
            copy_from = None
            # a longer prefix held by another sequence (busy or not) is shared by copying its
            # cells (cheap in a unified KV cache), e.g. a system prompt common to many requests
            for other in self.slots:
                if other is best:
                    continue
                n_other = span_start(prompt, min(common_prefix(other.cached, prompt), limit))
                if n_other >= n_reuse + self.min_shared_prefix:
                    copy_from, n_reuse = other.seq_id, n_other
            source = self.slots[copy_from] if copy_from is not None else best
            best.inexact_from = (
                source.inexact_from
                if source.inexact_from is not None and source.inexact_from < n_reuse
                else None
            )
            best.cached = list(prompt[:n_reuse]) if copy_from is not None else best.cached[:n_reuse]
            best.pending = list(prompt[n_reuse:])
            best.state = SlotState.PROMPT
            best.request = request
            best.next_token = None
            self._step += 1
            best.last_used = self._step
            admitted.append(Admission(best, request, n_reuse, copy_from))
        return admitted

    def forget(self, slot: Slot) -> None:
        """The slot's cells were cleared (e.g. a partial removal was refused)."""
        slot.cached = []
        slot.inexact_from = None

    # ------------------------------------------------------------------ context shift
    def shifts_needed(self, can_shift: Any) -> tuple[list[Shift], list[Slot]]:
        """Generating slots with no room for one more token: shift them, or list them as full.

        `can_shift(slot) -> (allowed: bool, n_keep: int)` tells, per slot, whether its request
        allows shifting and how many leading tokens it keeps.
        """
        shifts: list[Shift] = []
        full: list[Slot] = []
        for slot in self.slots:
            if slot.state is not SlotState.GENERATING or slot.next_token is None:
                continue
            if slot.n_past + 1 <= self.n_ctx_seq:
                continue
            allowed, n_keep = can_shift(slot)
            n_keep = span_start(slot.cached, max(0, min(n_keep, slot.n_past - 2)))
            n_discard = (slot.n_past - n_keep) // 2
            n_discard = span_end(slot.cached, n_keep + n_discard) - n_keep  # whole images only
            if allowed and n_discard > 0:
                shifts.append(Shift(slot, n_keep, n_discard))
                del slot.cached[n_keep : n_keep + n_discard]
                if slot.inexact_from is None or n_keep < slot.inexact_from:
                    slot.inexact_from = n_keep
            else:
                full.append(slot)
        return shifts, full

    # ------------------------------------------------------------------ planning
    def plan(self, drafts: dict[int, list[int]] | None = None) -> StepPlan:
        """One token for every generating slot, then prompt chunks round-robin up to n_batch,
        then draft tokens (`drafts[seq_id]`, speculative decoding) in the room left, handed
        out one token per slot in turn so that every drafting slot gets its share."""
        plan = StepPlan()
        budget = self.n_batch
        generating: list[PlanEntry] = []
        for slot in self.slots:
            if slot.state is SlotState.GENERATING and slot.next_token is not None:
                generating.append(PlanEntry(slot, [slot.next_token], slot.n_past, True))
                budget -= 1
        plan.entries.extend(generating)
        prompting = [
            s
            for s in self.slots
            if s.state is SlotState.PROMPT and s.pending and not is_image_start(s.pending[0])
        ]
        if prompting and budget > 0:
            k = self._rotate % len(prompting)
            prompting = prompting[k:] + prompting[:k]
            self._rotate += 1
            remaining = len(prompting)
            for slot in prompting:
                if budget <= 0:
                    break
                share = max(1, budget // remaining)
                remaining -= 1
                n = text_run(slot.pending, share)  # up to the next image, if any
                chunk = slot.pending[:n]
                last = n == len(slot.pending)
                plan.entries.append(PlanEntry(slot, chunk, slot.n_past, last))
                budget -= n
        if drafts and budget > 0:
            self._add_drafts(plan, generating, drafts, budget)
        return plan

    def _add_drafts(
        self,
        plan: StepPlan,
        generating: list[PlanEntry],
        drafts: dict[int, list[int]],
        budget: int,
    ) -> None:
        """Give each generating entry up to its draft's length, one token per slot in turn,
        within `budget` and the slot's room in the context."""
        wanted = {}
        for entry in generating:
            draft = drafts.get(entry.slot.seq_id)
            room = self.n_ctx_seq - entry.slot.n_past - 1
            if draft and room > 0:
                wanted[entry.slot.seq_id] = draft[:room]
        granted = dict.fromkeys(wanted, 0)
        if not wanted:
            return
        k = self._rotate % len(wanted)
        order = list(wanted)[k:] + list(wanted)[:k]
        while budget > 0:
            progress = False
            for seq in order:
                if budget > 0 and granted[seq] < len(wanted[seq]):
                    granted[seq] += 1
                    budget -= 1
                    progress = True
            if not progress:
                break
        for i, entry in enumerate(generating):  # the plan's first entries, in this order
            n = granted.get(entry.slot.seq_id, 0)
            if n:
                tokens = entry.tokens + list(wanted[entry.slot.seq_id][:n])
                plan.entries[i] = PlanEntry(entry.slot, tokens, entry.start_pos, True, n)

    def plan_image(self) -> StepPlan | None:
        """One image that a prompting slot has reached (its next pending entries), alone in a
        plan; slots take turns. None when no slot waits on an image."""
        waiting = [
            s
            for s in self.slots
            if s.state is SlotState.PROMPT and s.pending and is_image_start(s.pending[0])
        ]
        if not waiting:
            return None
        slot = waiting[self._rotate_images % len(waiting)]
        self._rotate_images += 1
        n = span_end(slot.pending, 1)
        last = n == len(slot.pending)
        return StepPlan([PlanEntry(slot, slot.pending[:n], slot.n_past, last)])

    def commit(
        self,
        plan: StepPlan,
        sampled: dict[int, int | None],
        n_accepted: dict[int, int] | None = None,
    ) -> list[tuple[Slot, int]]:
        """Record what a decoded plan stored. `sampled[seq_id]` is the next token of each slot
        whose logits came out (None when its request has finished and needs no more tokens);
        `n_accepted[seq_id]` how many of an entry's draft tokens were accepted (all when not
        given). Returns (slot, position) for each slot whose cells from that position on hold
        rejected drafts: the caller removes them (`seq_rm(seq, position, -1)`)."""
        rejected: list[tuple[Slot, int]] = []
        for entry in plan.entries:
            slot = entry.slot
            tokens = entry.tokens
            if entry.n_draft:
                keep = 1 + min(entry.n_draft, (n_accepted or {}).get(slot.seq_id, entry.n_draft))
                if keep < len(tokens):
                    tokens = tokens[:keep]
                    rejected.append((slot, entry.start_pos + keep))
            slot.cached.extend(tokens)
            if slot.state is SlotState.PROMPT:
                del slot.pending[: len(entry.tokens)]
                if entry.wants_logits:
                    slot.state = SlotState.GENERATING
            if entry.wants_logits:
                slot.next_token = sampled.get(slot.seq_id)
        return rejected

    def release(self, slot: Slot) -> None:
        """The slot's request is over; its cells stay cached for the next similar prompt.

        A token sampled but never fed is not in the cache; prompt tokens never evaluated neither.
        """
        slot.state = SlotState.IDLE
        slot.request = None
        slot.pending = []
        slot.next_token = None
        self._step += 1
        slot.last_used = self._step
