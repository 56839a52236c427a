"""A loaded model: weights, one context, its step loop, and the programmatic API.

    async with power.engine.load("model.gguf", num_parallel=4) as model:
        async for chunk in model.generate("Once upon a time", Options(num_predict=32)):
            print(chunk.text, end="")

`generate` is an async generator: wrap it in `contextlib.aclosing` (or let the `async for` run
to the end) so that leaving early releases the sequence at once rather than at garbage collection.

A model loaded with a vision projector (`LoadSpec.projector_path`) takes images: build the
prompt with `tokenize_with_images([text, image_bytes, text, ...])` and pass the result to
`generate` as `GenerationParams(prompt=..., images=...)`.

With a `PromptCache` (`power.engine.promptcache`), prompt prefixes outlive the model: cells a
slot drops are saved to the cache folder, a later load (this process or another) restores them,
and `save_prompt_cache` saves what the slots still hold before an unload.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import trio

from power.engine.backend import (
    Backend,
    BatchEntry,
    Context,
    Projector,
    Vocabulary,
    WorkerRunner,
)
from power.engine.drafter import Drafter, vocabulary_mismatch
from power.engine.loadspec import LoadSpec, clamp_num_ctx
from power.engine.multimodal import PromptImage, build_prompt
from power.engine.promptcache import PromptCache, model_key
from power.engine.rpc import DeviceShare, local_placement
from power.engine.runner import Runner
from power.engine.sampling import SequenceSampler
from power.engine.types import Chunk, ContextLost, EmbedResult, EngineError, GenerationParams
from power.options import Options

__all__ = ["LoadSpec", "LoadedModel", "load"]

log = logging.getLogger(__name__)


def _default_backend() -> Backend:
    from power.engine.llama_backend import LLAMA

    return LLAMA


class LoadedModel:
    """Owns a model's vocabulary, its context, its vision projector if it has one, and (for
    generative models) its `Runner`.

    Build with `await LoadedModel.open(spec)` (loads in a worker thread), start its loop with
    `nursery.start(model.run)`, and `close()` once the loop task has ended: `close` frees the
    projector, the context and the weights, and nothing else does.
    """

    def __init__(
        self,
        spec: LoadSpec,
        model: Vocabulary,
        context: Context,
        *,
        run_sync: WorkerRunner | None = None,
        projector: Projector | None = None,
        prompt_cache: PromptCache | None = None,
        cache_key: str | None = None,
        drafter: Drafter | None = None,
    ) -> None:
        self.spec = spec
        self.drafter = drafter
        self.model = model
        self.context = context
        self.projector = projector
        self.limiter = trio.CapacityLimiter(1)
        self.run_sync: WorkerRunner = run_sync or trio.to_thread.run_sync
        self.is_embedding = context.is_embedding
        # the cells one sequence may use: num_ctx as loaded (clamped like the context itself;
        # llama.cpp pads the context, and a unified cache lets any sequence use all of it)
        n_ctx_seq = min(
            clamp_num_ctx(spec.num_ctx, model.n_ctx_train, quiet=True), context.n_ctx_seq
        )
        self.n_ctx_seq = n_ctx_seq
        self.runner: Runner | None = None
        if not self.is_embedding:
            self.runner = Runner(
                model,
                context,
                n_slots=context.n_seq_max,
                n_ctx_seq=n_ctx_seq,
                limiter=self.limiter,
                run_sync=self.run_sync,
                projector=projector,
                prompt_cache=prompt_cache,
                cache_key=cache_key,
                speculative=spec.speculative,
                drafter=drafter,
            )
        self.load_duration_ns = 0
        self.loaded_at_ns = 0
        self._lost: BaseException | None = None  # the ContextLost an embedding call met
        self._lost_event = trio.Event()

    def load_ns_since(self, t_request_ns: int) -> int:
        """The load time, if this model was loaded while the request starting then waited."""
        return self.load_duration_ns if self.loaded_at_ns >= t_request_ns else 0

    @classmethod
    async def open(
        cls,
        spec: LoadSpec,
        *,
        backend: Backend | None = None,
        run_sync: WorkerRunner | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> LoadedModel:
        """Load `spec` with `backend` (llama.cpp by default) in a worker thread; with an
        enabled `prompt_cache`, the model's cache key is computed there too.

        Cancellation: the worker thread is never abandoned; if the caller is cancelled while it
        runs, what it opened is closed before `Cancelled` propagates (nothing leaks)."""
        backend = backend or _default_backend()
        run_sync = run_sync or trio.to_thread.run_sync
        t0 = time.perf_counter_ns()
        opened: list[tuple[Vocabulary, Context]] = []
        projectors: list[Projector] = []
        keys: list[str] = []

        def open_sync() -> None:
            opened.append(backend.open(spec))
            if spec.projector_path is not None:
                projectors.append(backend.open_projector(spec, opened[0][0]))
            state_format = getattr(opened[0][1], "seq_state_format", None)
            if prompt_cache is not None and prompt_cache.enabled and state_format:
                keys.append(model_key(spec, state_format))  # stats the files
            if spec.draft_path is not None and not opened[0][1].is_embedding:
                draft_spec = attrs.evolve(
                    spec,
                    model_path=spec.draft_path,
                    adapters=(),
                    projector_path=None,
                    draft_path=None,
                    rpc_servers=(),
                    tensor_split=(),
                )
                opened.append(backend.open(draft_spec))
                why = vocabulary_mismatch(opened[0][0], opened[1][0])
                if why is not None:
                    raise EngineError(
                        f"the draft model cannot serve this model: its vocabulary differs ({why})",
                        status=400,
                    )

        def close_opened() -> None:
            for projector in projectors:
                projector.close()
            for model, context in reversed(opened):
                context.close()
                model.close()

        try:
            await run_sync(open_sync)
        except BaseException:
            close_opened()
            raise
        model, context = opened[0]
        drafter = Drafter(*opened[1]) if len(opened) > 1 else None
        try:
            loaded = cls(
                spec,
                model,
                context,
                run_sync=run_sync,
                projector=(projectors or [None])[0],
                prompt_cache=prompt_cache,
                cache_key=(keys or [None])[0],
                drafter=drafter,
            )
        except BaseException:
            close_opened()
            raise
        loaded.load_duration_ns = time.perf_counter_ns() - t0
        loaded.loaded_at_ns = time.perf_counter_ns()
        return loaded

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The model's step loop; returns when the model can serve no more (`failure` says
        why). An embedding model has no loop: this waits until an embedding call finds its
        context lost (`ContextLost`)."""
        if self.runner is None:
            task_status.started()
            await self._lost_event.wait()
            return
        persistence = self.runner.persistence
        async with trio.open_nursery() as background:  # prompt cache files being written
            if persistence is not None:
                persistence.background = background
            try:
                await self.runner.run(task_status=task_status)
            finally:
                if persistence is not None:
                    persistence.background = None

    async def save_prompt_cache(self, seconds: float = 5.0) -> int:
        """Before an unload (after `run` has returned, before `close`): save the slots' cells
        to the persistent prompt cache, for at most `seconds` (the slot being saved then
        completes; no more are started). Returns how many were saved; never raises an
        Exception (a failed save is logged), and ignores the caller's cancellation until done."""
        if self.runner is None or self.runner.persistence is None:
            return 0
        with trio.CancelScope(shield=True), trio.move_on_after(seconds):
            try:
                return await self.runner.save_prompt_cache()
            except Exception:  # noqa: BLE001 - an unload never fails for the cache
                log.exception("could not save the prompt cache")
        return 0

    @property
    def failure(self) -> BaseException | None:
        """Why this model can serve no more (its step loop failed, or its context was lost);
        None while it can. The model manager then marks its instance FAILED (a reload)."""
        if self.runner is not None:
            return self.runner.broken
        return self._lost

    def close(self) -> None:
        """Free the projector, the context and the weights. Only after `run` has returned
        (nothing may be decoding). Idempotent. Blocks for as long as llama.cpp takes to free
        them (118-260 ms measured for gemma-3-270m): from the trio thread, use `aclose`."""
        if self.projector is not None:
            self.projector.close()
        if self.drafter is not None:
            self.drafter.close()
            self.drafter = None
        self.context.close()
        self.model.close()

    async def aclose(self) -> None:
        """`close` in a worker thread, under the context's limiter: it waits for a decode or an
        embedding still in a worker thread, and the trio thread (every HTTP request) does not
        wait while llama.cpp frees the weights. Cancellation waits for the close to finish
        (shielded): once this returns or raises, nothing of the model remains."""
        with trio.CancelScope(shield=True):
            await self.run_sync(self.close, limiter=self.limiter)

    def kv_bytes(self) -> int:
        """Approximate KV-cache bytes: cells × layers × embedding × K and V × element size."""
        element = {"f32": 4, "f16": 2, "q8_0": 1}.get(self.spec.kv_cache_type, 1)
        return self.context.n_ctx * self.model.n_layer * self.model.n_embd * 2 * element // 4

    def gpu_layers(self) -> int:
        """Layers offloaded to a GPU of this machine: 0 on a CPU-only build, without a GPU
        device, or for a model split over RPC workers (its local share runs on the CPU)."""
        from power.engine.llama import gpu_device_count

        if self._split_placement() or gpu_device_count() == 0:
            return 0
        if self.spec.num_gpu < 0:
            return self.model.n_layer + 1
        return min(self.spec.num_gpu, self.model.n_layer + 1)

    def placement(self) -> tuple[DeviceShare, ...]:
        """Where the layers live, for `/api/ps` and `/health`: a split model's devices as its
        host process counted them, else this machine's CPU and GPU by `gpu_layers`."""
        return self._split_placement() or local_placement(self.model.n_layer, self.gpu_layers())

    def _split_placement(self) -> tuple[DeviceShare, ...]:
        # a `power.engine.split.SplitContext` says where its layers are; other contexts do not
        return tuple(getattr(self.context, "placement", ()))

    # ------------------------------------------------------------------ tokens
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    @property
    def has_vision(self) -> bool:
        return self.projector is not None

    async def tokenize_with_images(
        self, parts: list[str | bytes], *, add_special: bool = True
    ) -> tuple[list[int], tuple[PromptImage, ...]]:
        """A prompt of text and images (`parts`: strings, and image files as bytes) as token ids
        with image placeholders, and its images (see `power.engine.multimodal`). The images are
        decoded and tokenised in a worker thread, beside whatever the model is decoding.

        Raises EngineError: 400 when the model has no vision projector or an image cannot be
        decoded."""
        projector = self.projector
        if projector is None:
            raise EngineError("this model does not support images", status=400)

        def tokenize() -> list:
            return projector.tokenize(parts, add_special=add_special)

        # no limiter: tokenising (and decoding the image files) runs beside the decode loop
        return build_prompt(await self.run_sync(tokenize))

    def fim_tokens(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt from the vocabulary's FIM tokens (prefix, suffix, middle)."""
        import llama_cpp

        vocab = self.model.vocab
        pre = llama_cpp.llama_vocab_fim_pre(vocab)
        suf = llama_cpp.llama_vocab_fim_suf(vocab)
        mid = llama_cpp.llama_vocab_fim_mid(vocab)
        if min(pre, suf, mid) < 0:
            raise EngineError("this model does not support insert (no FIM tokens)", status=400)
        head = [self.model.bos] if self.model.add_bos else []
        return (
            head
            + [pre]
            + self.tokenize(prefix, add_special=False, parse_special=False)
            + [suf]
            + self.tokenize(suffix, add_special=False, parse_special=False)
            + [mid]
        )

    @property
    def n_active(self) -> int:
        return self.runner.n_active if self.runner else 0

    @property
    def n_waiting(self) -> int:
        return self.runner.n_waiting if self.runner else 0

    # ------------------------------------------------------------------ generation
    def make_sampler(self, params: GenerationParams) -> SequenceSampler:
        grammar = None
        if params.grammar:
            from power.engine.grammar import GrammarConstraint

            try:
                grammar = GrammarConstraint(self.model.vocab, params.grammar)
            except Exception as exc:  # noqa: BLE001
                raise EngineError(f"invalid grammar: {exc}", status=400) from exc
        assert self.runner is not None
        return SequenceSampler(
            params.options, self.runner.vocab_info, grammar=grammar, n_ctx=self.n_ctx_seq
        )

    async def generate(
        self, prompt: str | list[int] | GenerationParams, options: Options | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream a generation: chunks of merged text, the last one `done` with the metrics.

        Raises EngineError when the request cannot be served (status 400: bad options, empty or
        too long prompt; 500: the sequence failed, the model was unloaded). Leaving early
        (break, cancellation, aclose) cancels the generation: the runner frees its sequence and
        its KV cells at its next step."""
        if self.runner is None:
            raise EngineError("this model does not support generate", status=400)
        if isinstance(prompt, GenerationParams):
            params = prompt
        else:
            tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
            params = GenerationParams(prompt=tuple(tokens), options=options or Options())
        params.options.check()  # OptionError: an EngineError with status 400
        sampler = self.make_sampler(params)
        try:
            generation = self.runner.submit(params, sampler)
        except BaseException:
            sampler.close()
            raise
        try:
            while True:
                for chunk in await generation.collector.take():
                    yield chunk
                    if chunk.done:
                        return
        finally:
            self.runner.cancel(generation)

    async def complete(self, prompt: str | list[int], options: Options | None = None) -> str:
        """The whole generated text (a convenience over `generate`)."""
        parts: list[str] = []
        async with contextlib.aclosing(self.generate(prompt, options)) as stream:
            async for chunk in stream:
                parts.append(chunk.text)
        return "".join(parts)

    # ------------------------------------------------------------------ embeddings
    async def embed(
        self, inputs: list[str], *, truncate: bool = True, dimensions: int | None = None
    ) -> EmbedResult:
        """L2-normalised embeddings of `inputs`, several per decode (pooled models only)."""
        if not self.is_embedding:
            raise EngineError("this model does not support embeddings", status=400)
        t0 = time.perf_counter_ns()
        token_lists = []
        limit = min(self.n_ctx_seq, self.context.n_batch)
        for text in inputs:
            tokens = self.tokenize(text)
            if len(tokens) > limit:
                if not truncate:
                    raise EngineError(
                        f"input length ({len(tokens)} tokens) exceeds the context length "
                        f"({limit} tokens)",
                        status=400,
                    )
                tokens = tokens[:limit]
            if not tokens:
                raise EngineError("cannot embed an empty input", status=400)
            token_lists.append(tokens)
        if dimensions is not None and not (0 < dimensions <= self.model.n_embd):
            raise EngineError(f"dimensions must be between 1 and {self.model.n_embd}", status=400)
        try:
            vectors = await self.run_sync(self._embed_sync, token_lists, limiter=self.limiter)
        except ContextLost as exc:
            self._lost = exc  # `run` returns: the manager fails the instance, the next reloads
            self._lost_event.set()
            raise
        out = []
        for vector in vectors:
            if dimensions is not None:
                vector = vector[:dimensions]
            norm = float(np.linalg.norm(vector))
            out.append((vector / norm if norm > 0 else vector).astype(float).tolist())
        return EmbedResult(
            embeddings=out,
            prompt_eval_count=sum(len(t) for t in token_lists),
            duration_ns=time.perf_counter_ns() - t0,
        )

    def _embed_sync(self, token_lists: list[list[int]]) -> list[np.ndarray]:
        n_embd = self.model.n_embd
        capacity = self.context.n_batch
        n_seq = self.context.n_seq_max
        results: list[np.ndarray] = []
        i = 0
        while i < len(token_lists):
            entries: list[BatchEntry] = []
            n_tokens = 0
            while (
                i + len(entries) < len(token_lists)
                and len(entries) < n_seq
                and n_tokens + len(token_lists[i + len(entries)]) <= capacity
            ):
                tokens = token_lists[i + len(entries)]
                entries.append(BatchEntry(len(entries), tokens, 0, True))
                n_tokens += len(tokens)
            try:
                self.context.decode_batch(entries)
                for seq in range(len(entries)):
                    results.append(self.context.embedding_seq(seq, n_embd))
            finally:
                self.context.clear()
            i += len(entries)
        return results


@contextlib.asynccontextmanager
async def load(
    model_path: str | Path,
    options: Options | None = None,
    *,
    num_parallel: int = 4,
    adapters: tuple[str, ...] = (),
    kv_cache_type: str = "f16",
    backend: Backend | None = None,
    projector: str | Path | None = None,
    prompt_cache: PromptCache | None = None,
    draft: str | Path | None = None,
    speculative: bool = True,
) -> AsyncIterator[LoadedModel]:
    """Load a GGUF file (and a vision projector GGUF beside it, and a draft model for
    speculative decoding, if given) and run its step loop for the duration of the `async with`
    block. `speculative=False` turns speculative decoding off.

    Raises OptionError for a load option out of range (see `power.engine.loadspec` for the
    values that are adjusted instead). With a `prompt_cache` (opened: `PromptCache.open`),
    the slots' cells are saved to it when the block ends."""
    spec = LoadSpec.from_options(
        model_path,
        options or Options(),
        adapters=adapters,
        num_parallel=num_parallel,
        kv_cache_type=kv_cache_type,
        projector_path=projector,
    )
    spec = attrs.evolve(
        spec, draft_path=None if draft is None else str(draft), speculative=speculative
    )
    loaded = await LoadedModel.open(spec, backend=backend, prompt_cache=prompt_cache)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loaded.run)
            try:
                yield loaded
            finally:
                nursery.cancel_scope.cancel()
        await loaded.save_prompt_cache()
    finally:
        await loaded.aclose()
