"""How a model is loaded: `LoadSpec` (the reload key) and the load parameters llama.cpp accepts.

A request's load options are checked one by one by `power.options`; what depends on the model or
on the server (how many sequences share the context, the model's trained context, the machine's
cores) is settled here, so that no request value ever reaches a llama.cpp assertion or allocates
memory of the client's choosing:

- `num_ctx` (cells per sequence): below `MIN_NUM_CTX` it is raised to it; above the model's
  trained context it is lowered to it (as Ollama does), so `num_ctx: 1e9` never allocates;
  `n_ctx = num_ctx x n_seq_max` stays far below 2^32.
- `num_batch`: at least `n_seq_max` (llama.cpp aborts with `GGML_ASSERT(n_outputs_max <=
  cparams.n_outputs_max)` below it, and a step holds one token per generating sequence), at most
  the whole context; the micro-batch `n_ubatch` is at most `MAX_UBATCH` (its compute buffer grows
  with its square), except for embedding models, whose whole input must fit one micro-batch.
- `num_thread`, `num_thread_batch`: 0 is the default (every core); above `max_threads()` (4x the
  cores) they are clamped to it: threads beyond that only cost memory and scheduling.
- `num_parallel` (`NUM_PARALLEL`): 1 to `MAX_SEQ` (llama.cpp's LLAMA_MAX_SEQ).

Every adjustment is logged once at load. `LoadSpec.from_options` applies the same rules when the
spec is built (reading the trained context from the GGUF header when the caller does not give
it), so the spec used as the reload key, shown by `/api/ps` and used for the memory estimate is
the one that will really be loaded; `context_plan` applies them again, authoritatively, with the
loaded model's own numbers.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from pathlib import Path

import attrs

from power.options import LOAD_OPTIONS, OptionError, Options, coerce_option

log = logging.getLogger(__name__)

#: The smallest context a sequence gets: room for a prompt token and some generated text.
MIN_NUM_CTX = 32
#: Context length assumed at most when the GGUF does not say its trained context.
FALLBACK_MAX_NUM_CTX = 131_072
#: Tokens per micro-batch for generative models (llama.cpp's default n_ubatch).
MAX_UBATCH = 512
#: llama.cpp's LLAMA_MAX_SEQ: sequences one context can hold.
MAX_SEQ = 256


def max_threads() -> int:
    """The most threads a context may use: 4x the cores (hyper-threads, oversubscription)."""
    return 4 * max(1, os.cpu_count() or 1)


@attrs.frozen
class LoadSpec:
    """Everything that decides how a model is loaded; a different spec means a reload.

    Its option fields are exactly `power.options.LOAD_OPTIONS` (see `from_options`)."""

    model_path: str
    adapters: tuple[str, ...] = ()
    projector_path: str | None = None  # a vision projector (mmproj GGUF) loaded beside the model
    #: a draft model (Modelfile DRAFT) loaded beside the model for speculative decoding
    draft_path: str | None = None
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
    #: speculative decoding for requests that allow it (POWER_SPECULATIVE; a server setting)
    speculative: bool = True

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
        n_ctx_train: int | None = None,
        projector_path: str | Path | None = None,
    ) -> LoadSpec:
        """The spec for `options`, checked (OptionError) and normalised by the rules above.

        `n_ctx_train` is the model's trained context; None reads it from the GGUF header."""
        values = {name: getattr(options, name) for name in LOAD_OPTIONS}
        for name, value in values.items():
            if value is not None:
                coerce_option(name, value)
        if values["flash_attention"] is None:
            values["flash_attention"] = flash_attention
        if n_ctx_train is None:
            n_ctx_train = gguf_context_length(model_path)
        n_seq = clamp_parallel(num_parallel)
        num_ctx = clamp_num_ctx(values["num_ctx"], n_ctx_train, quiet=True)
        values["num_ctx"] = num_ctx
        values["num_batch"] = min(max(values["num_batch"], n_seq), num_ctx * n_seq)
        values["num_thread"] = min(values["num_thread"], max_threads())
        values["num_thread_batch"] = min(values["num_thread_batch"], max_threads())
        return cls(
            model_path=str(model_path),
            adapters=tuple(str(a) for a in adapters),
            projector_path=None if projector_path is None else str(projector_path),
            kv_cache_type=kv_cache_type,
            num_parallel=n_seq,
            **values,
        )


@attrs.frozen
class ContextPlan:
    """The context parameters handed to llama.cpp, derived by `context_plan`."""

    n_ctx_seq: int
    n_seq_max: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int


def clamp_parallel(num_parallel: int) -> int:
    n_seq = min(max(1, num_parallel), MAX_SEQ)
    if n_seq != num_parallel:
        log.warning("num_parallel %d adjusted to %d (1 to %d)", num_parallel, n_seq, MAX_SEQ)
    return n_seq


def clamp_num_ctx(num_ctx: int, n_ctx_train: int, *, quiet: bool = False) -> int:
    """`num_ctx` within [MIN_NUM_CTX, trained context]; negative is an OptionError."""
    if num_ctx < 0:
        raise OptionError(f"option 'num_ctx' must be at least 0, got {num_ctx}")
    upper = n_ctx_train if n_ctx_train > 0 else FALLBACK_MAX_NUM_CTX
    value = min(max(num_ctx, MIN_NUM_CTX), max(upper, MIN_NUM_CTX))
    if value != num_ctx and not quiet:
        if value > num_ctx:
            log.warning("num_ctx %d is too small; using %d", num_ctx, value)
        else:
            log.warning(
                "requested context size too large for model: num_ctx %d, trained %d; using %d",
                num_ctx,
                n_ctx_train,
                value,
            )
    return value


def context_plan(spec: LoadSpec, *, n_ctx_train: int, embedding: bool) -> ContextPlan:
    """The context llama.cpp is asked for; see the module docstring for every rule."""
    if spec.num_batch <= 0:
        raise OptionError(f"option 'num_batch' must be at least 1, got {spec.num_batch}")
    if spec.num_thread < 0 or spec.num_thread_batch < 0:
        raise OptionError("options 'num_thread' and 'num_thread_batch' must be at least 0")
    n_seq = clamp_parallel(spec.num_parallel)
    n_ctx_seq = clamp_num_ctx(spec.num_ctx, n_ctx_train)
    n_batch = max(spec.num_batch, n_seq)
    if n_batch != spec.num_batch:
        log.warning(
            "num_batch %d is below the %d parallel sequences; using %d",
            spec.num_batch,
            n_seq,
            n_batch,
        )
    if embedding:
        # non-causal attention: a whole input must fit one micro-batch
        n_batch = max(n_batch, n_ctx_seq)
        n_ubatch = n_batch
    else:
        n_batch = min(n_batch, n_ctx_seq * n_seq)
        n_ubatch = max(min(n_batch, MAX_UBATCH), n_seq)
    cap = max_threads()
    threads = []
    for name, value in (
        ("num_thread", spec.num_thread),
        ("num_thread_batch", spec.num_thread_batch),
    ):
        if value > cap:
            log.warning("%s %d is above 4x the cores; using %d", name, value, cap)
            value = cap
        threads.append(value or default_threads())
    return ContextPlan(
        n_ctx_seq=n_ctx_seq,
        n_seq_max=n_seq,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        n_threads=threads[0],
        n_threads_batch=threads[1] if spec.num_thread_batch else threads[0],
    )


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------- the GGUF header

_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


def gguf_context_length(path: str | Path) -> int:
    """`<architecture>.context_length` from a GGUF file's header; 0 when unknown or unreadable.

    Cached per (path, size, mtime); reads only the key-value section up to that key."""
    try:
        stat = os.stat(path)
    except OSError:
        return 0
    return _gguf_context_length(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _gguf_context_length(path: str, size: int, mtime_ns: int) -> int:
    try:
        with open(path, "rb", buffering=1 << 16) as f:
            return _read_context_length(f)
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return 0


def _read_context_length(f) -> int:
    def unpack(fmt: str):
        size = struct.calcsize("<" + fmt)
        data = f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack("<" + fmt, data)[0]

    def string() -> str:
        n = unpack("Q")
        if n > 1 << 20:
            raise ValueError("implausible GGUF string")
        return f.read(n).decode("utf-8")

    def skip(kind: int) -> None:
        if kind in _SCALARS:
            f.seek(struct.calcsize("<" + _SCALARS[kind]), 1)
        elif kind == _STRING:
            f.seek(unpack("Q"), 1)
        elif kind == _ARRAY:
            item, n = unpack("I"), unpack("Q")
            if item in _SCALARS:
                f.seek(n * struct.calcsize("<" + _SCALARS[item]), 1)
            else:
                for _ in range(n):
                    skip(item)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")

    if f.read(4) != b"GGUF":
        return 0
    unpack("I")  # version
    unpack("Q")  # tensors
    n_kv = unpack("Q")
    architecture = None
    for _ in range(n_kv):
        key = string()
        kind = unpack("I")
        if key == "general.architecture" and kind == _STRING:
            architecture = string()
        elif architecture and key == f"{architecture}.context_length" and kind in _SCALARS:
            return int(unpack(_SCALARS[kind]))
        else:
            skip(kind)
    return 0
