"""Models split over RPC workers: `open_split(spec)` and the `SplitContext` it returns.

`SplitContext` is a `power.engine.backend.Context` (plus the embedding calls `LoadedModel`
makes) whose llama.cpp context lives in a host process (`power.engine.split_host`), because
ggml-rpc aborts the process that owns a connection to a worker that goes away. The parent keeps a
vocabulary-only `LlamaModel` (the `Vocabulary`) for tokenizing, pieces and grammars; only decodes
and KV-cache operations cross to the host. The host loads through `power.engine.llama.open_model`,
so the context is sized by the same `context_plan` as a local load.

Lifecycle of a SplitContext::

    STARTING --host answered "ok"--> READY --close()--> CLOSED
        |                              |
        +--host failed or died---------+--> LOST --close()--> CLOSED

Once LOST, every call raises `WorkerLost`, a `ContextLost`: the runner's loop stops and fails
its requests with that message ("model runner failed: RPC worker ... went away ..."), the manager
marks the instance FAILED and forgets it, and the next request loads the model again, without the
workers that no longer answer (on this machine alone if none does). An error the host reports
for one call (not a death) is a plain `EngineError`, a `DecodeError` for a refused decode.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import mmap
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from power.engine.errors import ContextLost, DecodeError, EngineError
from power.engine.llama import LlamaError, LlamaModel, ModelLoadParams
from power.engine.rpc import DeviceShare, WorkerStatus, endpoint_weights, probe

if TYPE_CHECKING:
    from power.engine.backend import BatchEntry
    from power.engine.loadspec import LoadSpec

log = logging.getLogger(__name__)

#: How long loading a split model may take (uploading its layers to the workers included).
LOAD_TIMEOUT = 300.0
#: How long one decode (or any other request to the host) may take before the host is deemed
#: stuck on a hung worker and killed. ggml-rpc has no timeout of its own; a worker whose machine
#: vanishes is noticed sooner, by TCP keepalive (power.engine.split_host).
CALL_TIMEOUT = 300.0


class WorkerLost(ContextLost):
    """The host process of a split model died (a worker went away) or failed."""


class SplitState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    LOST = "lost"
    CLOSED = "closed"


_ALLOWED = {
    SplitState.STARTING: {SplitState.READY, SplitState.LOST, SplitState.CLOSED},
    SplitState.READY: {SplitState.LOST, SplitState.CLOSED},
    SplitState.LOST: {SplitState.CLOSED},
    SplitState.CLOSED: set(),
}


def open_split(spec: LoadSpec) -> tuple[LlamaModel, SplitContext] | None:
    """Load `spec` over the workers of `spec.rpc_servers` that answer now, or None if none does
    (the caller then loads the model on this machine alone). Blocking: call from a thread."""
    with concurrent.futures.ThreadPoolExecutor(len(spec.rpc_servers)) as pool:
        statuses = dict(zip(spec.rpc_servers, pool.map(probe, spec.rpc_servers), strict=True))
    ready = tuple(e for e, status in statuses.items() if status is WorkerStatus.READY)
    for endpoint, status in statuses.items():
        if status is not WorkerStatus.READY:
            log.warning("RPC server %s is %s: loading without it", endpoint, status.value)
    if not ready:
        log.warning("no RPC server is ready: loading %s on this machine alone", spec.model_path)
        return None
    local_weight, weights = endpoint_weights(ready, spec.rpc_servers, spec.tensor_split)
    # vocabulary and metadata only: the hyperparameters a vocab-only load leaves at 0 come from
    # the metadata first, then from the host's real model
    model = LlamaModel(spec.model_path, ModelLoadParams(vocab_only=True, numa=spec.numa))
    try:
        model.n_layer = _metadata_int(model, "block_count")
        model.n_ctx_train = _metadata_int(model, "context_length")
        context = SplitContext.start(spec, model, [(e, weights[e]) for e in ready], local_weight)
    except BaseException:
        model.close()
        raise
    for name in ("n_layer", "n_embd", "n_ctx_train", "n_swa", "size_bytes", "n_params"):
        setattr(model, name, context.info[name])
    return model, context


def _metadata_int(model: LlamaModel, key: str) -> int:
    value = model.meta(f"{model.architecture()}.{key}")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


class SplitContext:
    """A `Context` whose llama.cpp context lives in a host process. Not thread-safe beyond what
    the runner needs (one caller at a time; a lock guards the pipe anyway).

    `placement` says where the layers are (what `LoadedModel.placement` reports); the `n_*`
    sizes and `can_shift`, `is_embedding` are the host context's own."""

    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_seq_max: int
    can_shift: bool
    is_embedding: bool

    def __init__(
        self,
        process: subprocess.Popen,
        conn: Connection,
        shm_fd: int,
        n_vocab: int,
        endpoints: tuple[str, ...],
    ) -> None:
        self.state = SplitState.STARTING
        self.process = process
        self.n_vocab = n_vocab
        self.endpoints = endpoints
        self.info: dict[str, Any] = {}
        self.placement: tuple[DeviceShare, ...] = ()
        self._conn = conn
        self._lock = threading.Lock()
        self._shm_fd = shm_fd
        self._rows = 0
        self._logits: np.ndarray | None = None
        self._row_slot: dict[int, int] = {}
        self._stderr: deque[str] = deque(maxlen=20)
        self._stderr_thread = threading.Thread(
            target=self._pump_stderr, name=f"split-host-{process.pid}", daemon=True
        )
        self._stderr_thread.start()

    # ------------------------------------------------------------------ start
    @classmethod
    def start(
        cls,
        spec: LoadSpec,
        model: LlamaModel,
        endpoints: list[tuple[str, float]],
        local_weight: float,
    ) -> SplitContext:
        """Start a host process and load the model there; raises LlamaError on failure."""
        parent_sock, child_sock = socket.socketpair()
        shm_fd = os.memfd_create("power-split-logits")
        rows = max(1, spec.num_parallel)  # logits rows of one decode; grown when needed
        os.ftruncate(shm_fd, rows * model.n_vocab * 4)
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "power.engine.split_host",
                    str(child_sock.fileno()),
                    str(shm_fd),
                ],
                pass_fds=(child_sock.fileno(), shm_fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "GGML_NO_BACKTRACE": "1"},
            )
        except BaseException:
            parent_sock.close()
            os.close(shm_fd)
            raise
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        context = cls(process, conn, shm_fd, model.n_vocab, tuple(e for e, _ in endpoints))
        try:
            conn.send(
                {
                    "spec": spec,
                    "endpoints": endpoints,
                    "local_weight": local_weight,
                    "n_layer": model.n_layer,
                    "rows": rows,
                }
            )
            if not conn.poll(LOAD_TIMEOUT):
                raise LlamaError(f"loading over RPC took more than {LOAD_TIMEOUT:.0f}s")
            status, value = conn.recv()
            if status != "ok":
                raise LlamaError(f"llama.cpp could not load {spec.model_path} over RPC: {value}")
        except (EOFError, OSError) as exc:
            context.close()
            raise LlamaError(
                f"the RPC host process for {spec.model_path} died while loading{context._why()}"
            ) from exc
        except BaseException:
            context.close()
            raise
        context._map(rows)
        context.info = value
        context.placement = value["placement"]
        context.n_ctx = value["n_ctx"]
        context.n_ctx_seq = value["n_ctx_seq"]
        context.n_batch = value["n_batch"]
        context.n_seq_max = value["n_seq_max"]
        context.can_shift = value["can_shift"]
        context.is_embedding = value["is_embedding"]
        context._move(SplitState.READY)
        log.info(
            "%s split (keepalive on %d worker connections): %s",
            spec.model_path,
            value["n_keepalive"],
            ", ".join(
                f"{s.device}{'@' + s.endpoint if s.endpoint else ''} {s.layers}"
                for s in context.placement
            ),
        )
        return context

    # ------------------------------------------------------------------ the context API
    def decode_batch(self, entries: Sequence[BatchEntry]) -> None:
        """Decode in the host; the logits rows asked for come back through shared memory.
        Raises DecodeError when llama.cpp refuses the batch, WorkerLost when the host died."""
        n = sum(len(entry.tokens) for entry in entries)
        tokens = np.empty(n, dtype=np.int32)
        positions = np.empty(n, dtype=np.int32)
        seqs = np.empty(n, dtype=np.int32)
        flags = np.zeros(n, dtype=np.int8)
        i = 0
        for entry in entries:
            k = len(entry.tokens)
            tokens[i : i + k] = entry.tokens
            positions[i : i + k] = np.arange(entry.start_pos, entry.start_pos + k)
            seqs[i : i + k] = entry.seq_id
            if entry.wants_logits and k:
                flags[i + k - max(1, min(entry.n_logits, k)) : i + k] = 1
            i += k
        wanted = np.flatnonzero(flags).tolist()
        if len(wanted) > self._rows:
            self._grow(len(wanted))
        status = self._call(
            "decode",
            self._rows,
            tokens.tobytes(),
            positions.tobytes(),
            seqs.tobytes(),
            flags.tobytes(),
            probe_on_loss=True,
        )
        self._row_slot = {row: k for k, row in enumerate(wanted)}
        if status != 0:
            raise DecodeError(f"llama_decode failed with status {status} (RPC host)")

    def logits_row(self, i: int) -> np.ndarray:
        """The logits of batch row `i` (a view of shared memory, valid until the next decode)."""
        assert self._logits is not None
        return self._logits[self._row_slot[i]]

    def embedding_seq(self, seq: int, n_embd: int) -> np.ndarray:
        return np.frombuffer(self._call("embedding_seq", seq, n_embd), dtype=np.float32).copy()

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(self._call("seq_rm", seq, p0, p1))

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self._call("seq_add", seq, p0, p1, delta)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self._call("seq_cp", src, dst, p0, p1)

    def clear(self) -> None:
        self._call("clear")

    def close(self) -> None:
        """End the host process (at once: workers free its buffers when it disconnects)."""
        if self.state is SplitState.CLOSED:
            return
        self._move(SplitState.CLOSED)
        with self._lock:
            try:
                self._conn.send(("close",))
            except (OSError, ValueError):
                pass
            self._conn.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._logits = None
        self._stderr_thread.join(timeout=1)
        os.close(self._shm_fd)

    # ------------------------------------------------------------------ internals
    def _move(self, to: SplitState) -> None:
        if to not in _ALLOWED[self.state]:
            raise RuntimeError(f"split context: illegal move {self.state.value} -> {to.value}")
        self.state = to

    def _call(self, op: str, *args: Any, probe_on_loss: bool = False) -> Any:
        if self.state is not SplitState.READY:
            raise WorkerLost(f"the RPC split of this model is {self.state.value}")
        with self._lock:
            try:
                self._conn.send((op, *args))
                if not self._conn.poll(CALL_TIMEOUT):
                    # a worker that hangs (alive to TCP, silent to ggml): ggml would wait for ever
                    self.process.kill()
                    self._move(SplitState.LOST)
                    raise WorkerLost(
                        f"no answer from the RPC workers within {CALL_TIMEOUT:.0f}s (one of "
                        f"{', '.join(self.endpoints)} hangs?); the model will be reloaded"
                    )
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._move(SplitState.LOST)
                raise WorkerLost(self._loss_message(probe_on_loss)) from exc
        if status != "ok":
            raise EngineError(f"RPC host: {value}")
        return value

    def _loss_message(self, probe_workers: bool) -> str:
        """Why the host died: which workers no longer answer (probed only off the event loop)."""
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
        gone = []
        if probe_workers:
            gone = [e for e in self.endpoints if probe(e, timeout=1.0) is WorkerStatus.DOWN]
        who = f"RPC worker {', '.join(gone)} went away" if gone else "an RPC worker failed"
        return f"{who}; the model will be reloaded without it{self._why()}"

    def _why(self) -> str:
        """The host's exit and its last ggml complaints, e.g. ` (SIGABRT: send failed ...;
        Remote RPC server crashed or returned malformed response)`."""
        self._stderr_thread.join(timeout=0.5)
        complaints = []
        for line in self._stderr:
            # "<time> WARNING split-host[pid]: llama.cpp: <text>" or "<file>:<line>: <text>"
            text = line.split("llama.cpp: ", 1)[-1] if "llama.cpp: " in line else line
            text = re.sub(r"^\S+\.(?:c|cpp|h):\d+: ", "", text)
            if any(word in text.lower() for word in ("error", "abort", "crash", "fail")):
                complaints.append(text)
        code = self.process.returncode
        exited = []
        if code is not None and code < 0:
            exited = [signal.Signals(-code).name]
        elif code:
            exited = [f"exit status {code}"]
        details = "; ".join(exited + complaints[-2:])
        return f" ({details})" if details else ""

    def _pump_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)  # the last lines say why the host died, if it does
                own = "llama.cpp: " not in line and (" WARNING " in line or " ERROR " in line)
                log.log(logging.WARNING if own else logging.DEBUG, "%s", line)
        stream.close()

    def _map(self, rows: int) -> None:
        self._logits = None
        self._mmap = mmap.mmap(self._shm_fd, rows * self.n_vocab * 4)
        self._logits = np.frombuffer(self._mmap, dtype=np.float32).reshape(rows, self.n_vocab)
        self._rows = rows

    def _grow(self, rows: int) -> None:
        os.ftruncate(self._shm_fd, rows * self.n_vocab * 4)
        self._map(rows)
