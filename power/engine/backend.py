"""The seam between power's concurrency core and llama.cpp: a small backend protocol.

The runner (`runner.py`), `LoadedModel` and the model manager talk to a model only through these
protocols, so tests run them on the CPU with a fake backend whose decode returns scripted logits
(and can be told to block, fail or be slow at a given step). Production passes `LLAMA`
(`power.engine.llama_backend.LlamaBackend`): `power.engine.llama`'s `LlamaModel` and
`LlamaContext` implement `Vocabulary` and `Context`; for a model split over RPC workers, a
vocabulary-only `LlamaModel` and a `power.engine.split.SplitContext` (whose `placement` says where
the layers are; `LoadedModel.placement` reads it when a context has one).

Failures: a decode the backend refuses raises `DecodeError` (the runner fails that batch's
sequences and goes on); a context that can no longer be used raises `ContextLost` from any call
(the loop stops, the instance fails, the next request reloads the model).

Images: a model with a vision projector also has a `Projector` (`Backend.open_projector`, an
mtmd context in production, `power.engine.projector`). It tokenises a prompt made of text and
image bytes (decoding PNG/JPEG/... on the way) into token ids and `ImageChunk`s, and encodes one
chunk into an `EmbeddingBatch` that `Context.decode_embeddings` evaluates in a sequence's KV cells.

Threading: `Backend.open`, `Context.decode_batch`, `Context.decode_embeddings`,
`Context.logits_row`, `Context.seq_state_get`/`seq_state_set` (the persistent prompt cache),
`Projector.tokenize` and `Projector.encode` block and run in a worker thread (`WorkerRunner`, `trio.to_thread.run_sync` in production). Decoding and encoding happen one
at a time per context (the runner's step loop, under the context's limiter); `Projector.tokenize`
may run in any worker thread at the same time (mtmd's tokenizer only reads its context). The
sequence operations and token pieces are cheap and run on the trio thread between decodes. None
of these objects is otherwise thread-safe; the runner guarantees that only one thread touches a
context at a time.

Ownership: what `open` returns belongs to the caller, who calls `context.close()` and then
`model.close()` once nothing decodes any more (`LoadedModel.close`); a projector is closed
before the context. An `ImageChunk`'s backend handle frees itself when the chunk is garbage
(it may outlive the projector that made it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import numpy as np

if TYPE_CHECKING:
    from power.engine.loadspec import LoadSpec


@attrs.frozen
class BatchEntry:
    """Tokens of one sequence at consecutive positions from `start_pos`. When `wants_logits`,
    the logits of the entry's last `n_logits` tokens are kept (more than one: a speculative
    step's draft tokens); a token's row is the number of tokens before it in the batch (rows
    count every token of every entry, in order)."""

    seq_id: int
    tokens: Sequence[int]
    start_pos: int
    wants_logits: bool
    n_logits: int = 1


@attrs.frozen(eq=False)
class ImageChunk:
    """One image as the projector tokenised it: `n_tokens` embeddings that take `n_pos`
    positions in the sequence (more tokens than positions with M-RoPE), and `key`, a digest of
    what the embeddings depend on (the image's bytes and its place among that image's chunks), so
    that equal keys mean equal embeddings. `handle` is the backend's (an mtmd chunk)."""

    key: str
    n_tokens: int
    n_pos: int
    handle: Any = None


@attrs.frozen(eq=False)
class EmbeddingBatch:
    """An encoded image ready to be evaluated in sequence `seq_id`: `embeddings` is
    float32[n_tokens, n_embd]; `positions` int32[n_pos_per_embd * n_tokens] (section-major: all
    tokens' first position component, then the second...; one component without M-RoPE);
    `non_causal`: the image's tokens attend to each other both ways (decode them alone)."""

    seq_id: int
    start_pos: int
    embeddings: np.ndarray
    positions: np.ndarray
    non_causal: bool = False

    @property
    def n_tokens(self) -> int:
        return int(self.embeddings.shape[0])


class Vocabulary(Protocol):
    """The loaded weights' vocabulary and sizes (a `LlamaModel` in production)."""

    n_vocab: int
    n_ctx_train: int
    n_layer: int
    n_embd: int
    size_bytes: int
    bos: int
    add_bos: bool
    eog_ids: list[int]
    newline_ids: list[int]

    def is_eog(self, token: int) -> bool: ...

    def piece(self, token: int) -> bytes:
        """The bytes token `token` stands for; raises on a token outside the vocabulary."""
        ...

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def close(self) -> None: ...


class Context(Protocol):
    """One context: `n_seq_max` sequences sharing a KV cache (a `LlamaContext` in production)."""

    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_seq_max: int
    can_shift: bool
    is_embedding: bool

    def decode_batch(self, entries: Sequence[BatchEntry]) -> None:
        """Evaluate `entries` (at most `n_batch` tokens in all); raise `DecodeError` when the
        backend refuses them (the KV cache is then as before the call), `ContextLost` when the
        context is gone (e.g. a split model's host process died)."""
        ...

    def decode_embeddings(self, batch: EmbeddingBatch, wants_logits: bool) -> None:
        """Evaluate an encoded image in its sequence's cells (split into decodes of at most
        `n_batch` embeddings); when `wants_logits`, the logits of its last embedding are
        `logits_row(-1)` afterwards. Raises `DecodeError` when the backend refuses it."""
        ...

    def logits_row(self, row: int) -> np.ndarray:
        """float32[n_vocab] logits of batch row `row` of the last decode (-1: its last row with
        logits); valid until the next."""
        ...

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of `seq` (-1: open end); False if a partial drop is refused."""
        ...

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None: ...

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None: ...

    def seq_pos_max(self, seq: int) -> int:
        """The last position `seq` holds a cell for; -1 when it holds none."""
        ...

    # The persistent prompt cache (`power.engine.promptcache`). Optional: a context without
    # `seq_state_get` (e.g. a model split over RPC workers) has no persistent prompt cache.
    # Both block (a copy of the cells) and run in a worker thread under the context's limiter.

    #: what the state bytes depend on beside the model and the load options (e.g. the version
    #: of the library that serialises them): part of the cache key
    seq_state_format: str

    def seq_state_get(self, seq: int) -> bytes | bytearray:
        """The state of sequence `seq` (its cells and their positions) as bytes."""
        ...

    def seq_state_set(self, seq: int, data: bytes | bytearray) -> int:
        """Replace the cells of `seq` by a state from `seq_state_get` (of a context loaded
        the same way); returns the cells `seq` now holds, 0 when the state is refused."""
        ...

    def close(self) -> None: ...


class Projector(Protocol):
    """A model's vision projector (an mtmd context in production)."""

    def tokenize(
        self, parts: Sequence[str | bytes], *, add_special: bool
    ) -> list[int | ImageChunk]:
        """The prompt made of `parts` (text, and image files as bytes) as token ids and image
        chunks, in order (special tokens in the text are parsed; the projector adds what its
        model wraps an image in). Raises `EngineError` (400) for an image it cannot decode."""
        ...

    def encode(self, image: ImageChunk, seq_id: int, start_pos: int) -> EmbeddingBatch:
        """Run the vision encoder on `image` for sequence `seq_id` at `start_pos`; raises
        `DecodeError` when it fails."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Opens models: `open(spec)` blocks (a worker thread calls it) and returns the vocabulary
    and a context sized by `power.engine.loadspec.context_plan`, or raises.
    `open_projector(spec, model)` loads `spec.projector_path` beside the opened model (only
    called when the spec has one)."""

    def open(self, spec: LoadSpec) -> tuple[Vocabulary, Context]: ...

    def open_projector(self, spec: LoadSpec, model: Vocabulary) -> Projector: ...


#: How blocking backend calls leave the trio thread: `await run_sync(fn, *args, limiter=...)`.
#: Production: `trio.to_thread.run_sync` (never abandoned on cancel: the thread owns the context
#: while it runs). Tests may pass a runner that calls `fn` on the trio thread after a gate.
WorkerRunner = Callable[..., Awaitable[Any]]
