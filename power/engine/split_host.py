"""The host process of a model split over RPC workers (`python -m power.engine.split_host`).

Why a process of its own: ggml-rpc ends every socket failure with `GGML_ABORT`, which aborts the
whole process. A worker that dies mid-decode must not take `power serve` down with it, so the
llama.cpp model and context whose layers live on workers are owned here, and `power serve`
drives them through `power.engine.split.SplitContext`. If this process dies, the server sees
the end of its pipe, fails that model's requests and reloads it without the lost worker.

Protocol (a `multiprocessing.connection.Connection` over an inherited socket, pickled tuples):
the parent sends one load request, a dict holding the model's `LoadSpec`; this process answers
`("ok", info)` once the model and context are ready (loaded by `power.engine.llama.open_model`,
as a local load is, with the worker devices added), or `("err", message)`. Then each request
`(op, *args)` gets `("ok", value)` or `("err", message)`. Logits rows travel through a shared
memory file (an inherited memfd) instead of the pipe: after a decode, the rows whose logits were
asked for lie in it in batch order. `("close",)` or the end of the pipe ends the process at once: workers
free a client's buffers themselves when it disconnects.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import re
import signal
import socket
import sys
from multiprocessing.connection import Connection
from typing import Any

import llama_cpp
import numpy as np

from power.engine import llama as llama_mod
from power.engine.llama import Batch, ModelLoadParams, open_model
from power.engine.loadspec import LoadSpec
from power.engine.rpc import (
    DeviceShare,
    RemoteDevice,
    SplitPlan,
    device_name,
    plan_split,
    remote_devices,
)

log = logging.getLogger("power.split_host")

#: TCP keepalive on the worker connections: a worker whose machine vanishes without closing its
#: sockets is noticed after about KEEPIDLE + KEEPINTVL x KEEPCNT seconds of silence, or when data
#: sent to it stays unacknowledged for USER_TIMEOUT milliseconds (ggml sets no timeout at all).
KEEPIDLE, KEEPINTVL, KEEPCNT, USER_TIMEOUT_MS = 10, 5, 3, 30_000

_LAYER_LINE = re.compile(r"layer\s+(\d+) assigned to device (\S+),")


class Host:
    """The model, context and batch of one split model, driven by the parent's requests."""

    def __init__(self, request: dict[str, Any], shm_fd: int) -> None:
        spec: LoadSpec = request["spec"]
        self.layer_devices: dict[int, str] = {}
        _capture_layer_log(self)
        llama_mod.ensure_backend(spec.numa)
        _capture_layer_log(self)  # ensure_backend installed power's callback; take it back
        remote: list[RemoteDevice] = []
        handles: list[int] = []
        for endpoint, weight in request["endpoints"]:
            devices = remote_devices(endpoint)  # aborts this process if the worker is gone
            for device in devices:
                name = device_name(device).split(" ", 1)[0]
                remote.append(RemoteDevice(name, endpoint, weight / len(devices)))
                handles.append(device)
        self.plan: SplitPlan = plan_split(
            request["n_layer"], remote, request["local_weight"], num_gpu=spec.num_gpu
        )
        self.model, self.context = open_model(
            spec,
            ModelLoadParams(
                num_gpu=self.plan.n_gpu_layers,
                use_mmap=spec.use_mmap,
                use_mlock=spec.use_mlock,
                numa=spec.numa,
                devices=tuple(handles),
                tensor_split=self.plan.tensor_split,
                cpu_repack=False,  # compute the local layers as the workers compute theirs
            ),
        )
        self.batch = Batch(self.context.n_batch, 1)
        self.embeddings = self.context.is_embedding
        self.n_vocab = self.model.n_vocab
        self.shm_fd = shm_fd
        self.rows = 0
        self.logits: np.ndarray | None = None
        self._map(request["rows"])
        self.n_keepalive = harden_sockets()

    def info(self) -> dict[str, Any]:
        return {
            "n_ctx": self.context.n_ctx,
            "n_ctx_seq": self.context.n_ctx_seq,
            "n_batch": self.context.n_batch,
            "n_seq_max": self.context.n_seq_max,
            "can_shift": self.context.can_shift,
            "is_embedding": self.context.is_embedding,
            "size_bytes": self.model.size_bytes,
            "n_params": self.model.n_params,
            "n_layer": self.model.n_layer,
            "n_embd": self.model.n_embd,
            "n_ctx_train": self.model.n_ctx_train,
            "n_swa": self.model.n_swa,
            "placement": self.placement(),
            "n_keepalive": self.n_keepalive,
        }

    def placement(self) -> tuple[DeviceShare, ...]:
        """Where llama.cpp put each layer, counted from its own log lines (the plan computes
        the same rule; a mismatch is logged). The plan's devices are all listed, 0 layers or not.
        """
        planned = self.plan.placement
        n_units = len(self.layer_devices)
        if not n_units:
            return planned
        counts: dict[str, int] = {share.device: 0 for share in planned}
        for device in self.layer_devices.values():
            counts[device] = counts.get(device, 0) + 1
        endpoints = {share.device: share.endpoint for share in planned}
        actual = tuple(
            DeviceShare(name, endpoints.get(name), n, n / n_units) for name, n in counts.items()
        )
        if [(s.device, s.layers) for s in actual] != [(s.device, s.layers) for s in planned]:
            log.warning("llama.cpp placed layers %s, not as planned %s", actual, planned)
        return actual

    def _map(self, rows: int) -> None:
        if rows == self.rows:
            return
        self.logits = None
        size = max(1, rows) * self.n_vocab * 4
        self._mmap = mmap.mmap(self.shm_fd, size)
        self.logits = np.frombuffer(self._mmap, dtype=np.float32).reshape(max(1, rows), -1)
        self.rows = rows

    # ------------------------------------------------------------------ requests
    def decode(self, rows: int, tokens: bytes, pos: bytes, seqs: bytes, flags: bytes) -> int:
        self._map(rows)
        batch = self.batch
        n = len(tokens) // 4
        batch.clear()
        batch.token[:n] = np.frombuffer(tokens, dtype=np.int32)
        batch.pos[:n] = np.frombuffer(pos, dtype=np.int32)
        batch.n_seq_id[:n] = 1
        batch.logits[:n] = np.frombuffer(flags, dtype=np.int8)
        seq_rows = batch._seq_rows
        for i, seq in enumerate(np.frombuffer(seqs, dtype=np.int32).tolist()):
            seq_rows[i][0] = seq
        batch.n_tokens = n
        batch.raw.n_tokens = n
        status = self.context.decode(batch)
        if status == 0 and not self.embeddings:
            assert self.logits is not None
            for k, row in enumerate(np.flatnonzero(batch.logits[:n]).tolist()):
                self.logits[k] = self.context.logits_row(row)
        return status

    def handle(self, op: str, args: tuple) -> Any:
        context = self.context
        if op == "decode":
            return self.decode(*args)
        if op == "seq_rm":
            return context.seq_rm(*args)
        if op == "seq_add":
            return context.seq_add(*args)
        if op == "seq_cp":
            return context.seq_cp(*args)
        if op == "clear":
            return context.clear()
        if op == "embedding_seq":
            return context.embedding_seq(*args).tobytes()
        raise ValueError(f"unknown request {op!r}")


def harden_sockets() -> int:
    """Turn on TCP keepalive and a user timeout on every TCP socket of this process (the worker
    connections that ggml opened). Returns how many."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
                n += 1
        except OSError:
            pass
        finally:
            sock.detach()
    return n


_host_for_log: Host | None = None


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Referenced from module scope for the life of the process: C keeps calling it.
    try:
        line = text.decode("utf-8", "replace").rstrip()
        match = _LAYER_LINE.search(line)
        if match and _host_for_log is not None:
            _host_for_log.layer_devices[int(match.group(1))] = match.group(2)
        if level >= 3 and line:  # warnings and errors
            log.warning("llama.cpp: %s", line)
        elif llama_mod._LOG_LLAMA:
            log.debug("llama.cpp: %s", line)
    except Exception:  # noqa: BLE001 - never raise into C
        pass


def _capture_layer_log(host: Host) -> None:
    global _host_for_log
    _host_for_log = host
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def main(argv: list[str]) -> int:
    conn_fd, shm_fd = int(argv[1]), int(argv[2])
    # the parent decides when this process ends (Ctrl-C reaches the whole process group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.DEBUG if llama_mod._LOG_LLAMA else logging.INFO,
        format="%(asctime)s %(levelname)s split-host[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    conn = Connection(conn_fd)
    try:
        request = conn.recv()
    except EOFError:
        return 0
    try:
        host = Host(request, shm_fd)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("err", f"{type(exc).__name__}: {exc}"))
        return 1
    conn.send(("ok", host.info()))
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):
            break
        if op == "close":
            break
        try:
            reply = ("ok", host.handle(op, tuple(args)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply = ("err", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no FREE_BUFFER round trips: a worker frees a client's buffers on disconnect


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
