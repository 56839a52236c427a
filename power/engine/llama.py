"""Thin owners of llama.cpp's C resources, through llama-cpp-python's low-level ctypes API.

Nothing here knows about trio, requests or HTTP. Each class owns one C object and frees it in
`close()` (idempotent). None of these objects is thread-safe: the engine's step loop calls them
from one worker thread at a time (see `runner.py`).

- `LlamaModel`: the weights and the vocabulary (tokenize, token pieces, metadata); the
  `power.engine.backend.Vocabulary` of production.
- `LlamaContext`: one context with `n_seq_max` sequences and their KV cache; the
  `power.engine.backend.Context` of production (`decode_batch` fills its own `Batch`).
- `Batch`: a reusable `llama_batch` with numpy views on its arrays.
- `open_model(spec, params)`: weights, then a context sized by
  `power.engine.loadspec.context_plan` (so no request value reaches a llama.cpp assertion), then
  adapters; the production `Backend` (`power.engine.llama_backend`) and a split model's host
  process both load through it.

Importing this module sets `GGML_NO_BACKTRACE=1` (unless set): should ggml still abort, it
prints its one-line reason instead of a gdb backtrace of the whole process.
"""

from __future__ import annotations

import os

# ggml prints a gdb backtrace of the whole process when it aborts unless this is set; a fatal
# error (if one is still possible) should be one clear line. Set before llama.cpp can abort.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

import collections  # noqa: E402
import ctypes  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import attrs  # noqa: E402
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

from power.engine.backend import BatchEntry, EmbeddingBatch  # noqa: E402
from power.engine.loadspec import LoadSpec, context_plan  # noqa: E402
from power.engine.types import DecodeError  # noqa: E402

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


_recent_problems: collections.deque[str] = collections.deque(maxlen=8)
_LEVEL_WARN, _LEVEL_ERROR = 3, 4  # ggml_log_level; 5 is a continuation of the last line


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Referenced from module scope for the life of the process: C keeps calling it.
    try:
        line = text.decode("utf-8", "replace").rstrip()
        if _LEVEL_WARN <= level <= _LEVEL_ERROR and len(line) > 1:  # not CONT's "." lines
            _recent_problems.append(line)
        if _LOG_LLAMA:
            log.debug("llama.cpp: %s", line)
    except Exception:  # noqa: BLE001 - never raise into C
        pass


def _reason() -> str:
    """llama.cpp's last warning or error lines, to say why a load failed."""
    lines = [line for line in _recent_problems if line]
    _recent_problems.clear()
    return f" ({'; '.join(lines[-3:])})" if lines else ""


_LOG_LLAMA = bool(os.environ.get("POWER_DEBUG") or os.environ.get("OLLAMA_DEBUG"))


def ensure_backend(numa: bool = False) -> None:
    """Initialise llama.cpp once per process and route its log through `logging`."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        if numa:
            llama_cpp.llama_numa_init(1)  # GGML_NUMA_STRATEGY_DISTRIBUTE
        _backend_ready = True


_GPU_DEVICE_TYPES = (1, 2)  # ggml_backend_dev_type: GPU, IGPU (an RPC server counts as GPU)


def gpu_device_count() -> int:
    """Devices that layers can be offloaded to, as ggml's device registry lists them now.

    `llama_supports_gpu_offload()` is true for any build with a GPU-capable backend compiled
    in (the RPC backend included) even when no such device exists; this counts real ones."""
    try:
        from llama_cpp._ggml import libggml as lib

        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        devices = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
        return sum(1 for d in devices if lib.ggml_backend_dev_type(d) in _GPU_DEVICE_TYPES)
    except (ImportError, AttributeError, OSError):  # an older binding: trust llama.cpp
        return 1 if llama_cpp.llama_supports_gpu_offload() else 0


class LlamaError(RuntimeError):
    """llama.cpp refused a model, a context or a batch."""


@attrs.frozen
class ModelLoadParams:
    """How to load weights: the load-time options that belong to the model (not the context)."""

    num_gpu: int = -1  # layers to offload; -1 = all that fit (llama.cpp: negative = all)
    main_gpu: int = 0
    use_mmap: bool | None = None
    use_mlock: bool = False
    numa: bool = False
    vocab_only: bool = False
    #: ggml devices (`ggml_backend_dev_t` addresses) to offload to, e.g. RPC workers' devices;
    #: empty = llama.cpp's choice. `tensor_split`: their weights, in the same order.
    devices: tuple[int, ...] = ()
    tensor_split: tuple[float, ...] = ()
    #: let the CPU backend repack weights into its faster layouts (llama.cpp's "extra buffer
    #: types"); RPC devices cannot, so a split model turns it off to compute like its workers
    cpu_repack: bool = True


class LlamaModel:
    """Loaded weights and vocabulary. Frees them in `close()`."""

    def __init__(self, path: str | Path, params: ModelLoadParams = ModelLoadParams()) -> None:
        ensure_backend(params.numa)
        self.path = Path(path)
        mparams = llama_cpp.llama_model_default_params()
        if params.num_gpu >= 0:
            mparams.n_gpu_layers = min(params.num_gpu, 2**31 - 1)  # a C int32
        else:
            mparams.n_gpu_layers = 999 if llama_cpp.llama_supports_gpu_offload() else 0
        mparams.main_gpu = min(max(params.main_gpu, 0), 2**31 - 1)
        mparams.vocab_only = params.vocab_only
        mparams.use_extra_bufts = params.cpu_repack
        mode = llama_cpp.LLAMA_LOAD_MODE_AUTO
        if params.use_mmap is False:
            mode = 2 if params.use_mlock else 0  # MLOCK / NONE
        elif params.use_mlock:
            mode = 3  # MMAP_MLOCK
        elif params.use_mmap is True:
            mode = 1  # MMAP
        mparams.load_mode = mode
        if params.devices:  # NULL-terminated; both arrays only need to outlive the load call
            devices = (ctypes.c_void_p * (len(params.devices) + 1))(*params.devices, None)
            mparams.devices = ctypes.cast(devices, ctypes.c_void_p)
        if params.tensor_split:
            split = (ctypes.c_float * llama_cpp.llama_max_devices())(*params.tensor_split)
            mparams.tensor_split = split
        _recent_problems.clear()
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise LlamaError(f"llama.cpp could not load model {self.path}{_reason()}")
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_layer = llama_cpp.llama_model_n_layer(self._model)
        self.size_bytes = llama_cpp.llama_model_size(self._model)
        self.n_params = llama_cpp.llama_model_n_params(self._model)
        self.has_encoder = bool(llama_cpp.llama_model_has_encoder(self._model))
        self.has_decoder = bool(llama_cpp.llama_model_has_decoder(self._model))
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.n_swa = llama_cpp.llama_model_n_swa(self._model)
        self._pieces: dict[int, bytes] = {}
        self._eog = np.zeros(self.n_vocab, dtype=bool)
        for token in range(self.n_vocab):
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                self._eog[token] = True
        self.eog_ids = [int(t) for t in np.flatnonzero(self._eog)]
        newline = llama_cpp.llama_vocab_nl(self.vocab)
        self.newline_ids = [int(newline)] if 0 <= newline < self.n_vocab else []
        self._lora: list[ctypes.c_void_p] = []

    @property
    def handle(self) -> ctypes.c_void_p:
        if not self._model:
            raise LlamaError("model is closed")
        return self._model

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def architecture(self) -> str:
        return self.meta("general.architecture") or "unknown"

    def pooling_type(self) -> int:
        value = self.meta(f"{self.architecture()}.pooling_type")
        return int(value) if value is not None else llama_cpp.LLAMA_POOLING_TYPE_NONE

    def is_eog(self, token: int) -> bool:
        return 0 <= token < self.n_vocab and bool(self._eog[token])

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
            if n < 0:
                raise LlamaError("tokenization failed")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens rendered as their text)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        if not 0 <= token < self.n_vocab:  # llama.cpp would throw through C and abort
            raise LlamaError(f"token {token} is outside the vocabulary")
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        piece = buf.raw[:n]
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def load_lora(self, path: str | Path) -> ctypes.c_void_p:
        _recent_problems.clear()
        adapter = llama_cpp.llama_adapter_lora_init(self.handle, str(path).encode())
        if not adapter:
            raise LlamaError(f"llama.cpp could not load adapter {path}{_reason()}")
        self._lora.append(adapter)
        return adapter

    def close(self) -> None:
        for adapter in self._lora:
            llama_cpp.llama_adapter_lora_free(adapter)
        self._lora.clear()
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


KV_CACHE_TYPES = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7}


@attrs.frozen
class ContextParams:
    n_ctx_per_seq: int = 4096
    n_seq_max: int = 4
    n_batch: int = 512
    n_ubatch: int | None = None  # None: n_batch
    n_threads: int = 0
    n_threads_batch: int = 0
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    embeddings: bool = False
    pooling: int = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
    kv_unified: bool = False


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class LlamaContext:
    """One llama.cpp context: `n_seq_max` sequences, each with up to `n_ctx_per_seq` cells."""

    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        self.model = model
        self.params = params
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = params.n_ctx_per_seq * params.n_seq_max
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = params.n_ubatch or params.n_batch
        cparams.n_seq_max = params.n_seq_max
        threads = params.n_threads or default_threads()
        cparams.n_threads = threads
        cparams.n_threads_batch = params.n_threads_batch or threads
        if params.flash_attention is None:
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        else:
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if params.flash_attention
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        kv_type = KV_CACHE_TYPES.get(params.kv_cache_type.lower())
        if kv_type is None:
            raise LlamaError(f"unknown KV cache type {params.kv_cache_type!r}")
        cparams.type_k = kv_type
        cparams.type_v = kv_type
        cparams.embeddings = params.embeddings
        cparams.pooling_type = params.pooling
        cparams.kv_unified = params.kv_unified
        # keep every cell of sliding-window layers too: prefix reuse and sharing between
        # sequences need the cells of any position, not only the last window
        cparams.swa_full = True
        cparams.no_perf = True
        _recent_problems.clear()
        self._ctx = llama_cpp.llama_init_from_model(model.handle, cparams)
        if not self._ctx:
            raise LlamaError(
                f"llama.cpp could not create a context{_reason() or ' (out of memory?)'}"
            )
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(self._ctx)
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.n_seq_max = llama_cpp.llama_n_seq_max(self._ctx)
        self.memory = llama_cpp.llama_get_memory(self._ctx)
        self.can_shift = bool(self.memory) and bool(llama_cpp.llama_memory_can_shift(self.memory))
        self.n_vocab = model.n_vocab
        self.is_embedding = bool(params.embeddings)
        self._batch: Batch | None = None

    @property
    def handle(self) -> ctypes.c_void_p:
        if not self._ctx:
            raise LlamaError("context is closed")
        return self._ctx

    def set_lora(self, adapters: list[tuple[ctypes.c_void_p, float]]) -> None:
        n = len(adapters)
        # llama_adapter_lora_init returns POINTER(c_void_p) handles, and
        # llama_set_adapters_lora takes an array of exactly that type.
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*[a for a, _ in adapters])
        scales = (ctypes.c_float * max(n, 1))(*[s for _, s in adapters])
        if llama_cpp.llama_set_adapters_lora(self.handle, arr, n, scales) != 0:
            raise LlamaError("llama.cpp refused the LoRA adapters")

    def decode(self, batch: Batch) -> int:
        return llama_cpp.llama_decode(self.handle, batch.raw)

    def decode_batch(self, entries: Sequence[BatchEntry]) -> None:
        """The `Context` protocol's decode: fill this context's own batch and decode it."""
        if self._batch is None:
            self._batch = Batch(self.n_batch, 1)
        batch = self._batch
        batch.clear()
        for entry in entries:
            batch.add(
                entry.seq_id,
                entry.tokens,
                entry.start_pos,
                entry.wants_logits,
                n_logits=entry.n_logits,
            )
        status = self.decode(batch)
        if status != 0:
            raise DecodeError(f"llama_decode failed with status {status}")

    def decode_embeddings(self, batch: EmbeddingBatch, wants_logits: bool) -> None:
        """The `Context` protocol's image evaluation: `batch`'s embeddings at its positions in
        its sequence, `n_batch` at a time (a non-causal image attends to itself both ways);
        the logits of the last embedding are `logits_row(-1)` when `wants_logits`."""
        n_total = batch.n_tokens
        n_pos_per_embd = len(batch.positions) // max(n_total, 1)
        positions = batch.positions.reshape(n_pos_per_embd, n_total)
        seq = (llama_cpp.llama_seq_id * 1)(batch.seq_id)
        seq_pointer = ctypes.cast(seq, ctypes.POINTER(llama_cpp.llama_seq_id))
        if batch.non_causal:
            llama_cpp.llama_set_causal_attn(self.handle, False)
        try:
            for i0 in range(0, n_total, self.n_batch):
                i1 = min(i0 + self.n_batch, n_total)
                n = i1 - i0
                embd = np.ascontiguousarray(batch.embeddings[i0:i1], dtype=np.float32)
                pos = np.ascontiguousarray(positions[:, i0:i1], dtype=np.int32).reshape(-1)
                n_seq_id = np.ones(n, dtype=np.int32)
                logits = np.zeros(n, dtype=np.int8)
                if wants_logits and i1 == n_total:
                    logits[-1] = 1
                raw = llama_cpp.llama_batch()
                raw.n_tokens = n
                raw.token = None
                raw.embd = embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                raw.pos = pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))
                raw.n_seq_id = n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
                raw.seq_id = (ctypes.POINTER(llama_cpp.llama_seq_id) * n)(*[seq_pointer] * n)
                raw.logits = logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
                status = llama_cpp.llama_decode(self.handle, raw)
                if status != 0:
                    raise DecodeError(f"llama_decode failed with status {status} on an image")
        finally:
            if batch.non_causal:
                llama_cpp.llama_set_causal_attn(self.handle, True)

    def logits_row(self, i: int) -> np.ndarray:
        """A numpy view of the logits of batch row `i`; valid until the next decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.handle, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def embedding_seq(self, seq: int, n_embd: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_embeddings_seq(self.handle, seq)
        if not ptr:
            raise LlamaError("no pooled embedding for sequence")
        return np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy()

    def embedding_ith(self, i: int, n_embd: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_embeddings_ith(self.handle, i)
        if not ptr:
            raise LlamaError("no embedding for batch row")
        return np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy()

    # KV cache sequence operations -------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        if not self.memory:
            return True
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        llama_cpp.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        if not self.memory:
            return -1
        return llama_cpp.llama_memory_seq_pos_max(self.memory, seq)

    #: what the bytes of `seq_state_get` depend on beside the model and the context's
    #: parameters: llama.cpp's serialisation, as built into this llama-cpp-python
    seq_state_format = f"llama.cpp/{llama_cpp.__version__}"

    def seq_state_get(self, seq: int) -> bytearray:
        """The state (KV cells, with their positions) of sequence `seq`, copied to host
        memory. Blocking (a memory copy of the cells); call it between decodes."""
        size = llama_cpp.llama_state_seq_get_size(self.handle, seq)
        data = bytearray(size)
        if size == 0:
            return data
        buffer = (ctypes.c_uint8 * size).from_buffer(data)
        n = llama_cpp.llama_state_seq_get_data(self.handle, buffer, size, seq)
        if n != size:
            raise LlamaError(f"llama_state_seq_get_data wrote {n} of {size} bytes")
        return data

    def seq_state_set(self, seq: int, data: bytes | bytearray) -> int:
        """Load a state from `seq_state_get` into sequence `seq` (its cells are replaced);
        returns the number of cells `seq` holds afterwards, 0 when llama.cpp refused it."""
        size = len(data)
        if size == 0:
            return 0
        if isinstance(data, bytearray):
            buffer = (ctypes.c_uint8 * size).from_buffer(data)
        else:
            buffer = (ctypes.c_uint8 * size).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(self.handle, buffer, size, seq) == 0:
            return 0
        return self.seq_pos_max(seq) + 1

    def clear(self) -> None:
        if self.memory:
            llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None


class Batch:
    """A reusable `llama_batch` of up to `capacity` tokens, one sequence id per token."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, n_seq_max)
        self.token = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        self._seq_rows = [self.raw.seq_id[i] for i in range(capacity)]
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0
        self.raw.n_tokens = 0

    def add(
        self,
        seq: int,
        tokens: list[int],
        start_pos: int,
        want_last_logits: bool,
        *,
        n_logits: int = 1,
    ) -> int:
        """Append `tokens` of sequence `seq` at positions from `start_pos`; return the row of the
        last token. When `want_last_logits`, the logits of the last `n_logits` tokens are kept."""
        n = len(tokens)
        i0 = self.n_tokens
        i1 = i0 + n
        if i1 > self.capacity:
            raise LlamaError("batch overflow")
        self.token[i0:i1] = tokens
        self.pos[i0:i1] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.n_seq_id[i0:i1] = 1
        self.logits[i0:i1] = 0
        rows = self._seq_rows
        for i in range(i0, i1):
            rows[i][0] = seq
        if want_last_logits:
            self.logits[max(i0, i1 - max(1, n_logits)) : i1] = 1
        self.n_tokens = i1
        self.raw.n_tokens = i1
        return i1 - 1

    def close(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None


def open_model(spec: LoadSpec, params: ModelLoadParams) -> tuple[LlamaModel, LlamaContext]:
    """Load the weights per `params`, then the context `context_plan` sizes for `spec`, then
    `spec`'s adapters (blocking). What `LlamaBackend.open` and a split model's host process
    (`power.engine.split_host`) both do, so a model computes the same wherever it is loaded.
    The caller owns the result; on failure nothing is left open."""
    model = LlamaModel(spec.model_path, params)
    try:
        pooling = model.pooling_type()
        embedding = pooling not in (
            llama_cpp.LLAMA_POOLING_TYPE_NONE,
            llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
        )
        plan = context_plan(spec, n_ctx_train=model.n_ctx_train, embedding=embedding)
        context = LlamaContext(
            model,
            ContextParams(
                n_ctx_per_seq=plan.n_ctx_seq,
                n_seq_max=plan.n_seq_max,
                n_batch=plan.n_batch,
                n_ubatch=plan.n_ubatch,
                n_threads=plan.n_threads,
                n_threads_batch=plan.n_threads_batch,
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
    return model, context


def open_projector(spec: LoadSpec, model: LlamaModel):  # -> LlamaProjector
    """Load `spec.projector_path` beside `model` (blocking)."""
    from power.engine.projector import LlamaProjector

    assert spec.projector_path is not None
    _recent_problems.clear()
    return LlamaProjector(
        spec.projector_path,
        model.handle,
        n_threads=spec.num_thread or default_threads(),
        use_gpu=spec.num_gpu != 0 and gpu_device_count() > 0,
        log_callback=_log_callback,
        reason=_reason,
    )
