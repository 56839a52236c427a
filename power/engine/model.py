"""A loaded model: weights, one context, its step loop, and the programmatic API.

    async with power.engine.load("model.gguf", num_parallel=4) as model:
        async for chunk in model.generate("Once upon a time", Options(num_predict=32)):
            print(chunk.text, end="")

`generate` is an async generator: wrap it in `contextlib.aclosing` (or let the `async for` run
to the end) so that leaving early releases the sequence at once rather than at garbage collection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import llama_cpp
import numpy as np
import trio

from power.engine.llama import (
    Batch,
    ContextParams,
    LlamaContext,
    LlamaModel,
    ModelLoadParams,
)
from power.engine.runner import Runner
from power.engine.sampling import SequenceSampler
from power.engine.types import Chunk, EmbedResult, EngineError, GenerationParams
from power.options import LOAD_OPTIONS, Options

log = logging.getLogger(__name__)


@attrs.frozen
class LoadSpec:
    """Everything that decides how a model is loaded; a different spec means a reload.

    Its option fields are exactly `power.options.LOAD_OPTIONS` (see `from_options`)."""

    model_path: str
    adapters: tuple[str, ...] = ()
    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    use_mlock: bool = False
    numa: bool = False
    num_thread: int = 0
    num_thread_batch: int = 0
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    num_parallel: int = 4
    #: RPC workers (host:port) that may hold layers, and the weights of this machine and each
    #: of them (power.engine.split); not options: server settings
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()

    @classmethod
    def from_options(
        cls,
        model_path: str | Path,
        options: Options,
        *,
        adapters: tuple[str, ...] = (),
        num_parallel: int = 4,
        kv_cache_type: str = "f16",
        flash_attention: bool | None = None,
    ) -> LoadSpec:
        values = {name: getattr(options, name) for name in LOAD_OPTIONS}
        if values["flash_attention"] is None:
            values["flash_attention"] = flash_attention
        return cls(
            model_path=str(model_path),
            adapters=tuple(str(a) for a in adapters),
            kv_cache_type=kv_cache_type,
            num_parallel=num_parallel,
            **values,
        )


class LoadedModel:
    """Owns a LlamaModel, a LlamaContext and (for generative models) a Runner.

    Build with `await LoadedModel.open(spec)` (loads in a worker thread), start its loop with
    `nursery.start(model.run)`, and `close()` after the loop task has ended.
    """

    def __init__(self, spec: LoadSpec, model: LlamaModel, context: LlamaContext) -> None:
        self.spec = spec
        self.model = model
        self.context = context
        self.limiter = trio.CapacityLimiter(1)
        self.is_embedding = context.params.embeddings
        n_ctx_seq = min(spec.num_ctx, context.n_ctx_seq)
        self.n_ctx_seq = n_ctx_seq
        self.runner: Runner | None = None
        if not self.is_embedding:
            self.runner = Runner(
                model, context, n_slots=context.n_seq_max, n_ctx_seq=n_ctx_seq, limiter=self.limiter
            )
        self.load_duration_ns = 0
        self.loaded_at_ns = 0

    def load_ns_since(self, t_request_ns: int) -> int:
        """The load time, if this model was loaded while the request starting then waited."""
        return self.load_duration_ns if self.loaded_at_ns >= t_request_ns else 0

    @classmethod
    async def open(cls, spec: LoadSpec) -> LoadedModel:
        t0 = time.perf_counter_ns()
        loaded = await trio.to_thread.run_sync(cls._open_sync, spec)
        loaded.load_duration_ns = time.perf_counter_ns() - t0
        loaded.loaded_at_ns = time.perf_counter_ns()
        return loaded

    @classmethod
    def _open_sync(cls, spec: LoadSpec) -> LoadedModel:
        if spec.rpc_servers:
            from power.engine.split import open_split

            split = open_split(spec)  # None when no worker answers: load here alone
            if split is not None:
                return cls(spec, *split)
        model = LlamaModel(
            spec.model_path,
            ModelLoadParams(
                num_gpu=spec.num_gpu,
                main_gpu=spec.main_gpu,
                use_mmap=spec.use_mmap,
                use_mlock=spec.use_mlock,
                numa=spec.numa,
            ),
        )
        try:
            pooling = model.pooling_type()
            embedding = pooling not in (
                llama_cpp.LLAMA_POOLING_TYPE_NONE,
                llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
            )
            num_ctx = spec.num_ctx
            if model.n_ctx_train > 0:
                num_ctx = min(num_ctx, model.n_ctx_train) if embedding else num_ctx
            n_seq = max(1, spec.num_parallel)
            n_batch = spec.num_batch
            if embedding:
                n_batch = max(n_batch, num_ctx)  # a whole input must fit one ubatch
            context = LlamaContext(
                model,
                ContextParams(
                    n_ctx_per_seq=num_ctx,
                    n_seq_max=n_seq,
                    n_batch=n_batch,
                    n_threads=spec.num_thread,
                    n_threads_batch=spec.num_thread_batch,
                    flash_attention=spec.flash_attention,
                    kv_cache_type=spec.kv_cache_type,
                    embeddings=embedding,
                    pooling=pooling if embedding else llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
                    kv_unified=True,
                ),
            )
        except BaseException:
            model.close()
            raise
        try:
            if spec.adapters:
                context.set_lora([(model.load_lora(path), 1.0) for path in spec.adapters])
        except BaseException:
            context.close()
            model.close()
            raise
        return cls(spec, model, context)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The model's step loop (returns at once for embedding models, which have none)."""
        if self.runner is None:
            task_status.started()
            return
        await self.runner.run(task_status=task_status)

    def close(self) -> None:
        """Free C resources. Only after `run` has returned (nothing may be decoding)."""
        if self.runner is not None:
            self.runner.batch.close()
        self.context.close()
        self.model.close()

    def kv_bytes(self) -> int:
        """Approximate KV-cache bytes: cells × layers × embedding × K and V × element size."""
        element = {"f32": 4, "f16": 2, "q8_0": 1}.get(self.spec.kv_cache_type, 1)
        return self.context.n_ctx * self.model.n_layer * self.model.n_embd * 2 * element // 4

    def gpu_layers(self) -> int:
        """Layers offloaded to a local GPU (0 on a CPU-only build, RPC backend or not)."""
        from power.engine.rpc import has_local_gpu

        if getattr(self.context, "placement", None) or not has_local_gpu():
            return 0
        if self.spec.num_gpu < 0:
            return self.model.n_layer + 1
        return min(self.spec.num_gpu, self.model.n_layer + 1)

    # ------------------------------------------------------------------ tokens
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    def fim_tokens(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt from the vocabulary's FIM tokens (prefix, suffix, middle)."""
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
        return SequenceSampler(params.options, self.runner.vocab_info, grammar=grammar)

    async def generate(
        self, prompt: str | list[int] | GenerationParams, options: Options | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream a generation. Leaving early (break, cancellation, aclose) frees the sequence."""
        if self.runner is None:
            raise EngineError("this model does not support generate", status=400)
        if isinstance(prompt, GenerationParams):
            params = prompt
        else:
            tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
            params = GenerationParams(prompt=tuple(tokens), options=options or Options())
        generation = self.runner.submit(params, self.make_sampler(params))
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
        vectors = await trio.to_thread.run_sync(self._embed_sync, token_lists, limiter=self.limiter)
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
        batch = Batch(capacity, 1)
        results: list[np.ndarray] = []
        try:
            i = 0
            while i < len(token_lists):
                batch.clear()
                group = 0
                while (
                    i + group < len(token_lists)
                    and group < n_seq
                    and batch.n_tokens + len(token_lists[i + group]) <= capacity
                ):
                    batch.add(group, token_lists[i + group], 0, True)
                    group += 1
                status = self.context.decode(batch)
                if status != 0:
                    raise EngineError(f"llama_decode failed with status {status}")
                for seq in range(group):
                    results.append(self.context.embedding_seq(seq, n_embd))
                self.context.clear()
                i += group
        finally:
            batch.close()
        return results


@contextlib.asynccontextmanager
async def load(
    model_path: str | Path,
    options: Options | None = None,
    *,
    num_parallel: int = 4,
    adapters: tuple[str, ...] = (),
    kv_cache_type: str = "f16",
) -> AsyncIterator[LoadedModel]:
    """Load a GGUF file and run its step loop for the duration of the `async with` block."""
    spec = LoadSpec.from_options(
        model_path,
        options or Options(),
        adapters=adapters,
        num_parallel=num_parallel,
        kv_cache_type=kv_cache_type,
    )
    loaded = await LoadedModel.open(spec)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loaded.run)
            try:
                yield loaded
            finally:
                nursery.cancel_scope.cancel()
    finally:
        loaded.close()
