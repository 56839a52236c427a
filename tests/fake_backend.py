"""A fake backend for power's concurrency core: scripted logits, KV cells checked, no model.

- `FakeVocabulary`: a 64-token vocabulary; token t reads "t " (so text shows the token ids);
  token 0 ends a generation, 1 is BOS. `tokenize("5 6 7")` is [5, 6, 7].
- `FakeContext`: keeps the KV cells of every sequence ({position: token}) and checks that every
  decode appends at the next free position of its sequence (the scheduler's view and the cache's
  must agree), that a batch fits `n_batch`, that sequence ids are in range, and that a logits
  row read was asked for (`n_logits` rows per entry: a speculative step's drafts). Its logits
  come from a script: a function of the tokens of the row's sequence up to that row;
  `on_decode` sees every batch before it is decoded. It can be told to
  fail a given decode (`fail_decodes`), to lose itself at a given decode (`lose_decodes`:
  `ContextLost`, as a split model whose worker died, and `broken` from then on) or to raise in
  KV-cache operations (`broken`). Its embeddings are all ones. Its sequence state
  (`seq_state_get`/`seq_state_set`, for the persistent prompt cache) is the cells' positions and
  tokens plus `state_pad` bytes per cell; `refuse_states` makes `seq_state_set` refuse (0).
  It and `FakeVocabulary` record the thread that closed them (`closed_in_thread`).
- `FakeProjector`: images are byte strings; image `bytes([a, b, c])` takes three positions and
  its embedding rows carry a, b, c, which `FakeContext.decode_embeddings` stores as if they were
  tokens (so the counting script continues an image that ends a prompt with c + 1). Bytes that
  start with `BAD` are an undecodable image. It counts encodes and can be told to fail them.
- `FakeBackend.open(spec)` sizes the context with the real `power.engine.loadspec.context_plan`;
  `open_projector` returns a `FakeProjector` (when the spec names a projector).
- `Worker`: stands in for `trio.to_thread.run_sync`. It runs the function on the trio thread,
  after waiting at a `Gate` the test may have set for that function's name (`_execute`,
  `_sample_guarded`, `open_sync`...). Like `trio.to_thread.run_sync` it checks for cancellation
  on entry and then cannot be cancelled while it waits or runs (shielded), so cancellation
  semantics match production, and
  `trio.testing.wait_all_tasks_blocked()` sees everything that is going on.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import struct
import threading
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import trio

from power.engine.backend import BatchEntry, EmbeddingBatch, ImageChunk
from power.engine.loadspec import LoadSpec, context_plan
from power.engine.types import ContextLost, DecodeError, EngineError

N_VOCAB = 64
EOG = 0
BOS = 1
POISON = 13  # the `nan_on_poison` script answers NaN once this token is in a sequence


def counting(history: list[int]) -> np.ndarray:
    """Greedy continuation: the token after the last one (2..63), then EOG after 63."""
    last = history[-1]
    target = EOG if last == N_VOCAB - 1 else max(2, last + 1)
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[target] = 10.0
    return row


def nan_on_poison(history: list[int]) -> np.ndarray:
    if POISON in history:
        return np.full(N_VOCAB, np.nan, dtype=np.float32)
    return counting(history)


class FakeVocabulary:
    n_vocab = N_VOCAB
    n_layer = 2
    n_embd = 8
    size_bytes = 1_000_000
    bos = BOS
    add_bos = True
    eog_ids = [EOG]
    newline_ids = [10]

    def __init__(self, *, n_ctx_train: int = 4096, bad_tokens: Sequence[int] = ()) -> None:
        self.n_ctx_train = n_ctx_train
        self.bad_tokens = set(bad_tokens)
        self.closed = False
        self.closed_in_thread: int | None = None

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def piece(self, token: int) -> bytes:
        if token in self.bad_tokens or not 0 <= token < N_VOCAB:
            raise ValueError(f"cannot detokenize {token}")
        return f"{token} ".encode()

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True):
        return [int(word) for word in text.split()]

    def detokenize(self, tokens: list[int]) -> str:
        return "".join(self.piece(t).decode() for t in tokens)

    def close(self) -> None:
        self.closed = True
        self.closed_in_thread = threading.get_ident()


_STATE_MAGIC = b"FAKESTATE"


class FakeContext:
    can_shift = True
    is_embedding = False
    seq_state_format = "fake/1"

    def __init__(
        self,
        *,
        n_seq_max: int,
        n_ctx_seq: int,
        n_batch: int,
        script: Callable[[list[int]], np.ndarray] = counting,
    ) -> None:
        self.n_seq_max = n_seq_max
        self.n_ctx_seq = n_ctx_seq
        self.n_ctx = n_ctx_seq * n_seq_max
        self.n_batch = n_batch
        self.script = script
        self.cells: dict[int, dict[int, int]] = {s: {} for s in range(n_seq_max)}
        self.n_decodes = 0
        self.fail_decodes: set[int] = set()  # decode numbers (from 1) that raise DecodeError
        self.lose_decodes: set[int] = set()  # ... that raise ContextLost (and break the cache)
        self.broken = False  # KV-cache operations raise: the context is unusable
        self.closed = False
        self.closed_in_thread: int | None = None
        self._rows: list[tuple[int, int]] = []
        self._wanted: set[int] = set()
        self.n_tokens_decoded = 0
        self.n_rows_wanted = 0
        #: called with each batch's entries before it is decoded (cells as they were before)
        self.on_decode: Callable[[Sequence[BatchEntry]], None] | None = None
        self.image_decodes: list[tuple[int, int, int]] = []  # (seq, start position, n_tokens)
        self.state_pad = 16  # bytes per cell in a state, beside its position and token
        self.refuse_states = False
        self.states_got: list[int] = []  # sequences whose state was read, in order
        self.states_set: list[int] = []  # sequences a state was restored into

    def tokens(self, seq: int) -> list[int]:
        return [self.cells[seq][p] for p in sorted(self.cells[seq])]

    def decode_batch(self, entries: Sequence[BatchEntry]) -> None:
        assert not self.closed, "decode on a closed context"
        self.n_decodes += 1
        if self.n_decodes in self.fail_decodes:
            raise DecodeError(f"scripted failure of decode {self.n_decodes}")
        if self.n_decodes in self.lose_decodes:
            self.broken = True
            raise ContextLost(f"scripted loss of the context at decode {self.n_decodes}")
        assert sum(len(e.tokens) for e in entries) <= self.n_batch, "batch overflow"
        if self.on_decode is not None:
            self.on_decode(entries)
        rows: list[tuple[int, int]] = []
        wanted: set[int] = set()
        for entry in entries:
            cells = self.cells[entry.seq_id]
            expected = max(cells) + 1 if cells else 0
            assert entry.start_pos == expected, (entry, expected)
            n = len(entry.tokens)
            if entry.wants_logits:
                assert 1 <= entry.n_logits <= n, entry
                wanted.update(range(len(rows) + n - entry.n_logits, len(rows) + n))
            for i, token in enumerate(entry.tokens):
                assert 0 <= token < N_VOCAB
                cells[entry.start_pos + i] = token
                rows.append((entry.seq_id, entry.start_pos + i))
        self._rows = rows
        self._wanted = wanted
        self.n_tokens_decoded += len(rows)
        self.n_rows_wanted += len(wanted)

    def decode_embeddings(self, batch: EmbeddingBatch, wants_logits: bool) -> None:
        assert not self.closed, "decode on a closed context"
        self.n_decodes += 1
        if self.n_decodes in self.fail_decodes:
            raise DecodeError(f"scripted failure of decode {self.n_decodes}")
        cells = self.cells[batch.seq_id]
        expected = max(cells) + 1 if cells else 0
        assert batch.start_pos == expected, (batch.start_pos, expected)
        assert list(batch.positions) == list(range(expected, expected + batch.n_tokens))
        for i, row in enumerate(batch.embeddings):
            cells[expected + i] = int(row[0])
        self.image_decodes.append((batch.seq_id, batch.start_pos, batch.n_tokens))
        self._rows = [(batch.seq_id, expected + batch.n_tokens - 1)]
        self._wanted = {0}

    def logits_row(self, row: int) -> np.ndarray:
        if row < 0:
            row += len(self._rows)
        assert row in self._wanted, f"the logits of row {row} were not asked for"
        seq, pos = self._rows[row]
        cells = self.cells[seq]
        return self.script([cells[p] for p in sorted(cells) if p <= pos])

    def embedding_seq(self, seq: int, n_embd: int) -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    def clear(self) -> None:
        self.cells = {s: {} for s in range(self.n_seq_max)}

    def _check(self) -> None:
        if self.broken:
            raise RuntimeError("the KV cache is unusable")

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        self._check()
        low = 0 if p0 < 0 else p0
        high = float("inf") if p1 < 0 else p1
        self.cells[seq] = {p: t for p, t in self.cells[seq].items() if not low <= p < high}
        return True

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self._check()
        low = 0 if p0 < 0 else p0
        high = float("inf") if p1 < 0 else p1
        self.cells[dst].update({p: t for p, t in self.cells[src].items() if low <= p < high})

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self._check()
        high = float("inf") if p1 < 0 else p1
        self.cells[seq] = {
            (p + delta if p0 <= p < high else p): t for p, t in self.cells[seq].items()
        }

    def seq_pos_max(self, seq: int) -> int:
        self._check()
        return max(self.cells[seq], default=-1)

    def seq_state_get(self, seq: int) -> bytes:
        self._check()
        self.states_got.append(seq)
        cells = sorted(self.cells[seq].items())
        body = b"".join(struct.pack("<ii", p, t) + bytes(self.state_pad) for p, t in cells)
        return _STATE_MAGIC + struct.pack("<I", len(cells)) + body

    def seq_state_set(self, seq: int, data: bytes) -> int:
        self._check()
        self.states_set.append(seq)
        data = bytes(data)
        if self.refuse_states or not data.startswith(_STATE_MAGIC):
            return 0
        (n,) = struct.unpack_from("<I", data, len(_STATE_MAGIC))
        step = 8 + self.state_pad
        offset = len(_STATE_MAGIC) + 4
        if len(data) != offset + n * step:
            return 0
        cells = {}
        for i in range(n):
            p, t = struct.unpack_from("<ii", data, offset + i * step)
            cells[p] = t
        self.cells[seq] = cells
        return n

    def close(self) -> None:
        self.closed = True
        self.closed_in_thread = threading.get_ident()


class FakeProjector:
    """Images are bytes: one position per byte, embedding rows carrying the byte values."""

    def __init__(self, vocabulary: FakeVocabulary) -> None:
        self.vocabulary = vocabulary
        self.encoded: list[bytes] = []  # every image encoded, in order
        self.fail_encodes = False
        self.closed = False

    def tokenize(self, parts, *, add_special: bool) -> list[int | ImageChunk]:
        pieces: list[int | ImageChunk] = []
        for index, part in enumerate(parts):
            if isinstance(part, str):
                pieces.extend(self.vocabulary.tokenize(part))
            elif part.startswith(b"BAD") or not part:
                raise EngineError(f"invalid image input: image {index} is broken", status=400)
            else:
                key = hashlib.sha256(part).hexdigest() + ":0"
                pieces.append(ImageChunk(key, len(part), len(part), bytes(part)))
        return pieces

    def encode(self, image: ImageChunk, seq_id: int, start_pos: int) -> EmbeddingBatch:
        assert not self.closed, "encode on a closed projector"
        if self.fail_encodes:
            raise DecodeError("scripted encoder failure")
        self.encoded.append(image.handle)
        rows = np.repeat(np.frombuffer(image.handle, np.uint8)[:, None], 4, 1).astype(np.float32)
        positions = np.arange(start_pos, start_pos + len(rows), dtype=np.int32)
        return EmbeddingBatch(seq_id, start_pos, rows, positions)

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Opens fake models; `fail_open` makes the next opens raise it."""

    def __init__(
        self,
        *,
        script: Callable[[list[int]], np.ndarray] = counting,
        n_ctx_train: int = 4096,
        bad_tokens: Sequence[int] = (),
    ) -> None:
        self.script = script
        self.n_ctx_train = n_ctx_train
        self.bad_tokens = bad_tokens
        self.fail_open: Exception | None = None
        self.opened: list[tuple[LoadSpec, FakeVocabulary, FakeContext]] = []

    def open(self, spec: LoadSpec) -> tuple[FakeVocabulary, FakeContext]:
        if self.fail_open is not None:
            raise self.fail_open
        plan = context_plan(spec, n_ctx_train=self.n_ctx_train, embedding=False)
        model = FakeVocabulary(n_ctx_train=self.n_ctx_train, bad_tokens=self.bad_tokens)
        context = FakeContext(
            n_seq_max=plan.n_seq_max,
            n_ctx_seq=plan.n_ctx_seq,
            n_batch=plan.n_batch,
            script=self.script,
        )
        self.opened.append((spec, model, context))
        return model, context

    def open_projector(self, spec: LoadSpec, model: FakeVocabulary) -> FakeProjector:
        self.projector = FakeProjector(model)
        return self.projector


class Gate:
    """Holds one call of a `Worker` function: `reached` is set when the call arrives,
    and it proceeds once `release()` is called."""

    def __init__(self) -> None:
        self.reached = trio.Event()
        self.released = trio.Event()

    def release(self) -> None:
        self.released.set()


class Worker:
    """A `WorkerRunner` that runs functions on the trio thread, behind optional gates."""

    def __init__(self) -> None:
        self.gates: dict[str, collections.deque[Gate]] = collections.defaultdict(collections.deque)
        self.calls: collections.Counter[str] = collections.Counter()
        self.made: list[Gate] = []

    def hold(self, name: str) -> Gate:
        """Hold the next call of the function called `name` (queued after earlier holds)."""
        gate = Gate()
        self.gates[name].append(gate)
        self.made.append(gate)
        return gate

    def release_all(self) -> None:
        """Release every gate ever made (for a test's teardown)."""
        for gate in self.made:
            gate.release()

    async def __call__(self, fn, *args, limiter=None, **kwargs):
        name = getattr(fn, "__name__", "")
        await trio.lowlevel.checkpoint_if_cancelled()  # as trio.to_thread.run_sync does on entry
        self.calls[name] += 1
        with trio.CancelScope(shield=True):  # then the thread is never abandoned
            if self.gates[name]:
                gate = self.gates[name].popleft()
                gate.reached.set()
                await gate.released.wait()
            else:
                await trio.lowlevel.checkpoint()
        return fn(*args)


@contextlib.asynccontextmanager
async def running(loaded) -> AsyncIterator:
    """Run `loaded`'s step loop (a `LoadedModel` on this backend) for the block, then stop it
    and free the model, as the model manager does."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loaded.run)
            yield loaded
            nursery.cancel_scope.cancel()
    finally:
        loaded.close()
