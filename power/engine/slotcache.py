"""The runner's side of the persistent prompt cache: save a slot's cells before they are dropped,
restore saved cells into a newly admitted slot.

`SlotPersistence` is used by `power.engine.runner.Runner` at three points, all between decode
steps of its loop (so no decode ever races these calls):

- admission (`save_evicted`): a slot handed to a prompt that does not continue its cells loses
  them; when at least `min_tokens` of them are lost (a short tail after a kept prefix is not
  worth a file: the prefix is saved with its next tail), its state is read (`Context.seq_state_get`, one worker call under the context's
  limiter for all such slots) before the runner drops them, and written to the cache folder in
  the background (`background`, a nursery the model's task owns) or at once without one;
- admission (`restore`): when the cache holds a longer prefix of the new prompt than the slot's
  own cells, the file is read and checked in a worker thread, then restored
  (`Context.seq_state_set`, under the limiter) and cut to the shared prefix; the positions are
  checked (0..n-1 for that sequence) and anything unexpected clears the sequence, so the prompt
  is then evaluated as if nothing had been cached. At most len(prompt) - 1 tokens are restored:
  the last one is evaluated for its logits;
- submission (`prefetch`): when a queued prompt matches a saved prefix, its file is read and
  checked in the background at once, while the loop goes on; its admission then finds the bytes
  ready instead of reading the file between two steps (which would hold the model's other
  sequences for that long). Reads held for queued requests take at most `PREFETCH_BYTES`;
  a read is dropped when no queued request wants it any more (`forget`);
- unload (`save_all`): the cells of every slot, most recently used first; the caller bounds
  the time it may take (`LoadedModel.save_prompt_cache`).

What is saved: a slot's cells only if they are exactly what evaluating its tokens from scratch
gives (no context shift moved them: `Slot.inexact_from`), they hold no image (placeholder ids
are negative), there are at least `min_tokens`, and no saved file already starts with them.

A failure to read, save or restore is logged and forgotten: it never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from power.engine.backend import Context, WorkerRunner
from power.engine.promptcache import Entry, PromptCache
from power.engine.scheduler import Admission, Slot, common_prefix

log = logging.getLogger(__name__)

#: Bytes of files read ahead for queued requests, at most.
PREFETCH_BYTES = 256 << 20


@attrs.define(eq=False)
class _Read:
    """A file read in the background for queued requests (`data` None: it failed)."""

    entry: Entry
    done: trio.Event = attrs.field(factory=trio.Event)
    data: Any = None


def supports_state(context: Context) -> bool:
    """Whether `context` can save and restore one sequence's cells."""
    return all(hasattr(context, name) for name in ("seq_state_get", "seq_state_set"))


class SlotPersistence:
    """Saves and restores slots' KV cells through a `PromptCache` under model key `key`."""

    def __init__(
        self,
        cache: PromptCache,
        key: str,
        context: Context,
        *,
        limiter: trio.CapacityLimiter,
        run_sync: WorkerRunner,
    ) -> None:
        self.cache = cache
        self.key = key
        self.context = context
        self.limiter = limiter
        self.run_sync = run_sync
        self.background: trio.Nursery | None = None
        self._reads: dict[str, _Read] = {}  # entry name -> its read ahead
        self._wanted: dict[int, str] = {}  # id(request) -> the entry name it waits for

    # ------------------------------------------------------------------ reading ahead
    def prefetch(self, request: Any, prompt: Sequence[int], slots: Sequence[Slot]) -> None:
        """A request was queued: start reading the file its prompt would restore from, in the
        background nursery (nothing without one, beyond `PREFETCH_BYTES`, or when a slot's
        cells already hold about as much of the prompt: the common case of a conversation's
        next turn, which must not cost a file read)."""
        if self.background is None or not self.cache.entries:
            return
        hit = self.cache.lookup(self.key, prompt, len(prompt) - 1)
        if hit is None:
            return
        entry, n = hit
        prompt = list(prompt)
        if any(common_prefix(s.cached, prompt) + self.cache.min_tokens > n for s in slots):
            return
        if entry.name not in self._reads:
            held = sum(r.entry.n_bytes for r in self._reads.values())
            if held + entry.n_bytes > min(PREFETCH_BYTES, self.cache.max_bytes):
                return
            read = self._reads[entry.name] = _Read(entry)
            self.background.start_soon(self._read_ahead, read)
        self._wanted[id(request)] = entry.name

    async def _read_ahead(self, read: _Read) -> None:
        try:
            read.data = await self.cache.read(read.entry)
        finally:
            read.done.set()

    def forget(self, request: Any) -> None:
        """`request` was admitted, withdrawn or failed: drop a read nobody waits for any more."""
        name = self._wanted.pop(id(request), None)
        if name is not None and name not in self._wanted.values():
            self._reads.pop(name, None)

    def forget_all(self) -> None:
        self._wanted.clear()
        self._reads.clear()

    # ------------------------------------------------------------------ saving
    def saveable(self, slot: Slot, tokens: Sequence[int]) -> bool:
        return (
            slot.inexact_from is None
            and len(tokens) >= self.cache.min_tokens
            and min(tokens) >= 0  # no image placeholder
            and self.cache.worth_saving(self.key, tokens, 0)
        )

    async def save_evicted(
        self, admissions: list[Admission], before: dict[int, list[int]], exact: dict[int, bool]
    ) -> None:
        """Save the cells that `admissions` are about to drop (`before`: each slot's tokens
        before admission, `exact`: whether its cells were exact then)."""
        victims: list[tuple[int, list[int]]] = []
        for admission in admissions:
            slot = admission.slot
            old = before[slot.seq_id]
            # what stays in memory: the new prompt's first n_reuse tokens, here or copied
            n_kept = min(admission.n_reuse, common_prefix(old, admission.request.prompt))
            if len(old) - n_kept < self.cache.min_tokens or not exact[slot.seq_id]:
                continue  # a short tail is not worth a file: its prefix is saved later
            if (
                len(old) >= self.cache.min_tokens
                and min(old) >= 0
                and self.cache.worth_saving(self.key, old, 0)
            ):
                victims.append((slot.seq_id, old))
        if not victims:
            return
        states = await self._states([(seq, len(tokens)) for seq, tokens in victims])
        for (_, tokens), state in zip(victims, states, strict=True):
            if state is None:
                continue
            if self.background is not None:
                self.cache.save_soon(self.background, self.key, tokens, state)
            else:
                await self.cache.save(self.key, tokens, state)

    async def save_all(self, slots: list[Slot]) -> int:
        """Save every slot's cells worth saving, most recently used first; returns how many.
        Cancellation (the caller's time bound) stops between two slots."""
        n_saved = 0
        for slot in sorted(slots, key=lambda s: -s.last_used):
            tokens = list(slot.cached)
            if not self.saveable(slot, tokens):
                continue
            (state,) = await self._states([(slot.seq_id, len(tokens))])
            if state is not None and await self.cache.save(self.key, tokens, state):
                n_saved += 1
        return n_saved

    async def _states(self, seqs: list[tuple[int, int]]) -> list[Any]:
        """The states of sequences (seq, expected number of cells), read in one worker call
        under the limiter; None for one whose cells are not as expected or that failed."""

        def read() -> list[Any]:
            states: list[Any] = []
            for seq, n_cells in seqs:
                try:
                    if self.context.seq_pos_max(seq) != n_cells - 1:
                        log.warning("sequence %d does not hold the expected cells", seq)
                        states.append(None)
                        continue
                    states.append(self.context.seq_state_get(seq))
                except Exception as exc:  # noqa: BLE001 - a cache never fails a request
                    log.warning("could not read the state of sequence %d: %s", seq, exc)
                    states.append(None)
            return states

        return await self.run_sync(read, limiter=self.limiter)

    # ------------------------------------------------------------------ restoring
    async def restore(self, slot: Slot, request: Any) -> int | None:
        """Restore the longest saved prefix of `prompt` into `slot`'s sequence when it beats
        the slot's own cells by at least `min_tokens`. Returns the tokens now cached (the slot's
        `cached`/`pending` are updated), or None when nothing was tried. Cells whose restore
        failed are cleared (0 is returned): the whole prompt is then evaluated."""
        try:
            return await self._restore(slot, request.prompt)
        finally:
            self.forget(request)

    async def _restore(self, slot: Slot, prompt: Sequence[int]) -> int | None:
        limit = len(prompt) - 1  # at least one token is evaluated, for its logits
        hit = self.cache.lookup(self.key, prompt, limit)
        if hit is None:
            return None
        entry, n = hit
        if n < len(slot.cached) + self.cache.min_tokens:
            return None
        read = self._reads.get(entry.name)
        if read is not None:  # read ahead (perhaps still under way)
            await read.done.wait()
            payload = read.data
        else:
            payload = await self.cache.read(entry)
        if payload is None:
            return None
        ok = await self.run_sync(
            self._restore_sync, slot.seq_id, payload, len(entry.tokens), n, limiter=self.limiter
        )
        if ok:
            slot.cached = list(prompt[:n])
            slot.pending = list(prompt[n:])
            slot.inexact_from = None
            self.cache.restored(n)
            return n
        slot.cached = []
        slot.pending = list(prompt)
        slot.inexact_from = None
        return 0

    def _restore_sync(self, seq: int, payload: Any, n_saved: int, n: int) -> bool:
        """Worker thread, under the limiter: the saved cells in `seq`, cut to `n`; False (and
        `seq` empty) if anything is not as expected."""
        context = self.context
        context.seq_rm(seq, -1, -1)
        try:
            restored = context.seq_state_set(seq, payload)
            ok = (
                restored == n_saved
                and context.seq_pos_max(seq) == n_saved - 1
                and (n == n_saved or context.seq_rm(seq, n, -1))
                and context.seq_pos_max(seq) == n - 1
            )
        except Exception as exc:  # noqa: BLE001 - a cache never fails a request
            log.warning("could not restore a prompt cache entry: %s", exc)
            ok = False
        if not ok:
            log.warning("prompt cache restore refused for sequence %d; evaluating instead", seq)
            context.seq_rm(seq, -1, -1)
        return ok
