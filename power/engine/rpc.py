"""ggml's RPC backend: the ctypes entry points, worker probes and the layer split.

llama-cpp-python is built with `-DGGML_RPC=ON` (see the Makefile): its wheel ships
`llama_cpp/lib/libggml-rpc.so`, which exports

- `ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices, devices)`: serve
  local devices to RPC clients (blocks for ever; `power rpc-worker`, llama.cpp's `rpc-server`);
- `ggml_backend_rpc_add_server(endpoint)`: a backend registry whose devices live on a remote
  worker (what llama.cpp's `--rpc` does); its devices go into `llama_model_params.devices`.

The protocol has no authentication and no encryption: a worker executes whatever graph a client
sends and hands out its memory. Run workers on a private network only.

Beware (ggml-rpc.cpp of this version): every socket failure on the client side ends in
`GGML_ABORT` (the whole process aborts), connecting included. power therefore never calls
`add_server` in `power serve` itself: models split over workers live in a child process
(`power.engine.split_host`), and this module only probes workers with a plain TCP handshake.

A worker serves one client connection at a time (its accept loop is sequential): while one
model's host process is connected, another client's HELLO waits. `probe()` tells such a worker
apart (`BUSY`) from one that is down.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import attrs
import numpy as np

log = logging.getLogger(__name__)

#: The RPC protocol version this build speaks (ggml-rpc.h, RPC_PROTO_*_VERSION).
PROTO_MAJOR = 7
PROTO_MINOR = 0
_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default

# ggml_backend_dev_type
DEVICE_CPU = 0
DEVICE_GPU = 1
DEVICE_IGPU = 2


class RpcError(RuntimeError):
    """ggml's RPC backend is missing from this build, or a worker offers no device. (Malformed
    worker addresses and weights are refused earlier, by `power.config`'s parsers.)"""


# ---------------------------------------------------------------- probing workers


class WorkerStatus(enum.Enum):
    READY = "ready"  # answered HELLO with a compatible protocol version
    BUSY = "busy"  # accepted the TCP connection but did not answer (serving another client)
    DOWN = "down"  # refused, unreachable or closed the connection
    INCOMPATIBLE = "incompatible"  # another RPC protocol version


def probe(endpoint: str, timeout: float = 2.0) -> WorkerStatus:
    """Connect to a worker and exchange HELLO, as a client would, then hang up.

    Never raises for network trouble. The worker sees a client that says hello and leaves; if it
    is busy, it meets this probe later in its accept queue and drops it the same way.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return WorkerStatus.DOWN
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            header = _recv_exactly(sock, 8)
            (size,) = struct.unpack("<Q", header)
            if size < 3 or size > 1024:
                return WorkerStatus.INCOMPATIBLE
            major, minor = _recv_exactly(sock, size)[:2]
        except TimeoutError:
            return WorkerStatus.BUSY
        except (OSError, EOFError):
            return WorkerStatus.DOWN
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        return WorkerStatus.INCOMPATIBLE
    return WorkerStatus.READY


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise EOFError("connection closed")
        data += part
    return data


# ---------------------------------------------------------------- the layer split


@attrs.frozen
class DeviceShare:
    """Where part of a model lives: `layers` of its n_layer + 1 (the output layer counts)."""

    device: str  # "CPU" (this machine), "GPU", or ggml's name of a remote device ("RPC0")
    endpoint: str | None  # the worker's host:port for a remote device
    layers: int
    share: float

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "endpoint": self.endpoint,
            "layers": self.layers,
            "share": round(self.share, 4),
        }


@attrs.frozen
class RemoteDevice:
    name: str  # ggml's device name ("RPC0", "RPC1"...)
    endpoint: str
    weight: float


@attrs.frozen
class SplitPlan:
    """llama.cpp parameters for a split: `n_gpu_layers` offloaded (the last ones), divided among
    the remote devices by `tensor_split`; the first layers stay on the local CPU."""

    n_gpu_layers: int
    tensor_split: tuple[float, ...]
    placement: tuple[DeviceShare, ...]


def endpoint_weights(
    endpoints: tuple[str, ...], configured: tuple[str, ...], weights: tuple[float, ...]
) -> tuple[float, dict[str, float]]:
    """The local weight and each endpoint's weight from `weights` (local first, then one per
    `configured` endpoint, missing ones 1): a weight stays with its worker when others are
    left out."""
    full = tuple(weights) + (1.0,) * max(0, 1 + len(configured) - len(weights))
    return full[0], {e: full[1 + configured.index(e)] for e in endpoints}


def plan_split(
    n_layer: int, remote: list[RemoteDevice], local_weight: float = 1.0, *, num_gpu: int = -1
) -> SplitPlan:
    """Split the `n_layer + 1` layer units of a model between this machine's CPU and `remote`.

    Shares follow the weights (local first). `num_gpu >= 0` fixes the number of offloaded layers
    instead (Ollama's option), divided among the remote devices by their weights. The assignment
    is llama.cpp's (llama-model.cpp, `load_tensors`), so `placement` says where layers really go.
    """
    n_units = n_layer + 1
    weights = tuple(d.weight for d in remote)
    if not remote or not any(w > 0 for w in weights):
        return SplitPlan(0, (), (DeviceShare("CPU", None, n_units, 1.0),))
    if num_gpu >= 0:
        n_gpu_layers = min(num_gpu, n_units)
    else:
        n_gpu_layers = n_units - round(n_units * local_weight / (local_weight + sum(weights)))
    counts = assign_layers(n_units, n_gpu_layers, weights)
    n_local = n_units - sum(counts)
    placement = [DeviceShare("CPU", None, n_local, n_local / n_units)]
    for device, count in zip(remote, counts, strict=True):
        placement.append(DeviceShare(device.name, device.endpoint, count, count / n_units))
    return SplitPlan(n_gpu_layers, weights, tuple(placement))


def assign_layers(n_units: int, n_gpu_layers: int, weights: tuple[float, ...]) -> list[int]:
    """How many of the last `n_gpu_layers` units each offload device gets: llama.cpp's rule in
    its float32 arithmetic (unit i goes to the first device whose cumulative share exceeds
    i / n_gpu_layers)."""
    counts = [0] * len(weights)
    n_offloaded = min(n_gpu_layers, n_units)
    if n_offloaded <= 0:
        return counts
    edges = np.cumsum(np.asarray(weights, dtype=np.float32), dtype=np.float32)
    edges = edges / edges[-1]
    for i in range(n_offloaded):
        position = np.float32(i) / np.float32(n_offloaded)
        device = int(np.searchsorted(edges, position, side="right"))
        counts[min(device, len(weights) - 1)] += 1
    return counts


def local_placement(n_layer: int, gpu_layers: int) -> tuple[DeviceShare, ...]:
    """The placement of a model loaded on this machine alone, `gpu_layers` of it on a GPU."""
    n_units = n_layer + 1
    gpu_layers = max(0, min(gpu_layers, n_units))
    shares = []
    if gpu_layers < n_units:
        shares.append(DeviceShare("CPU", None, n_units - gpu_layers, 1 - gpu_layers / n_units))
    if gpu_layers:
        shares.append(DeviceShare("GPU", None, gpu_layers, gpu_layers / n_units))
    return tuple(shares)


# ---------------------------------------------------------------- ctypes


def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


@functools.cache
def ggml() -> ctypes.CDLL:
    """libggml (the backend registry; ggml-base's symbols resolve through its dependencies)."""
    import llama_cpp  # noqa: F401  (loads libllama and its ggml libraries first)
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml", _lib_dir())
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for name, args, res in (
        ("ggml_backend_reg_by_name", [ctypes.c_char_p], vp),
        ("ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
        ("ggml_backend_reg_dev_count", [vp], sz),
        ("ggml_backend_reg_dev_get", [vp, sz], vp),
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_by_type", [ctypes.c_int], vp),
        ("ggml_backend_dev_by_name", [ctypes.c_char_p], vp),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_description", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_get_device", [vp], vp),
    ):
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = res
    return lib


@functools.cache
def ggml_rpc() -> ctypes.CDLL:
    """libggml-rpc with the two entry points power uses; RpcError if this build has none."""
    import llama_cpp  # noqa: F401
    from llama_cpp._ctypes_extensions import load_shared_library

    try:
        lib = load_shared_library("ggml-rpc", _lib_dir())
    except (FileNotFoundError, OSError, RuntimeError) as exc:
        raise RpcError(
            "this llama-cpp-python has no RPC backend (libggml-rpc); rebuild it with "
            "CMAKE_ARGS=-DGGML_RPC=ON (make install does)"
        ) from exc
    vp = ctypes.c_void_p
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = vp
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(vp),
    ]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


def local_devices() -> list[int]:
    """This machine's devices as a worker serves them (llama.cpp's rpc-server choice): the GPUs
    if there are any, else the CPU."""
    lib = ggml()
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(device) in (DEVICE_GPU, DEVICE_IGPU):
            devices.append(device)
    if not devices:
        cpu = lib.ggml_backend_dev_by_type(DEVICE_CPU)
        if cpu:
            devices.append(cpu)
    return devices


def device_name(device: int) -> str:
    lib = ggml()
    name = lib.ggml_backend_dev_name(device) or b"?"
    description = lib.ggml_backend_dev_description(device) or b""
    return f"{name.decode()} ({description.decode(errors='replace')})"


def device_memory(device: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    ggml().ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def remote_devices(endpoint: str) -> list[int]:
    """The devices of the worker at `endpoint`, connecting to it.

    ABORTS THE PROCESS if the worker cannot be reached (GGML_ABORT in ggml-rpc): call it only in
    a process that may die, after `probe()` said READY."""
    reg = ggml_rpc().ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise RpcError(f"RPC server {endpoint} has no devices")
    lib = ggml()
    return [
        lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))
    ]


def start_server(
    endpoint: str, devices: list[int], n_threads: int, cache_dir: str | None = None
) -> None:
    """Serve `devices` at `endpoint` (an IPv4 address and a port). Blocks for as long as the
    server runs (for ever, unless it cannot listen): call it from a thread of its own."""
    array = (ctypes.c_void_p * len(devices))(*devices)
    ggml_rpc().ggml_backend_rpc_start_server(
        endpoint.encode(),
        cache_dir.encode() if cache_dir else None,
        n_threads,
        len(devices),
        array,
    )


# ---------------------------------------------------------------- advertised memory

# ggml-backend-impl.h of the pinned llama.cpp: a device is its interface (15 function pointers),
# its registry and a context; a backend is a GUID pointer, its interface (16 function pointers),
# then its device.
_DEVICE_IFACE_SLOTS = 15
_GET_MEMORY, _INIT_BACKEND = 2, 5
_BACKEND_DEVICE_OFFSET = 8 + 16 * 8

_GetMemory = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
_InitBackend = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)


class _Device(ctypes.Structure):
    _fields_ = [
        ("iface", ctypes.c_void_p * _DEVICE_IFACE_SLOTS),
        ("reg", ctypes.c_void_p),
        ("context", ctypes.c_void_p),
    ]


class AdvertisedDevice:
    """A copy of a ggml device that reports `total` bytes of memory (all free) to RPC clients,
    as llama.cpp's old `rpc-server --mem` did. Everything else is the real device's: the copy
    shares its interface and context, and a backend made from it computes on the real device.

    Clients use the figure to split layers by free memory when given no tensor split. Keep the
    object alive for as long as ggml may use the device (the worker's whole life)."""

    def __init__(self, device: int, total: int) -> None:
        real = _Device.from_address(device)
        self.total = total
        self.struct = _Device(real.iface, real.reg, real.context)
        original_init = _InitBackend(real.iface[_INIT_BACKEND])
        get_device = ggml().ggml_backend_get_device

        def get_memory(dev: int, free: Any, total_out: Any) -> None:
            free[0] = self.total
            total_out[0] = self.total

        def init_backend(dev: int, params: bytes | None) -> int | None:
            backend = original_init(device, params)
            if backend:
                slot = ctypes.c_void_p.from_address(backend + _BACKEND_DEVICE_OFFSET)
                if slot.value == get_device(backend) == device:
                    slot.value = self.address  # ggml_backend_get_device() now answers the copy
                else:
                    log.error("unexpected ggml_backend layout: --mem is not advertised")
            return backend

        self._callbacks = (_GetMemory(get_memory), _InitBackend(init_backend))
        self.struct.iface[_GET_MEMORY] = ctypes.cast(self._callbacks[0], ctypes.c_void_p)
        self.struct.iface[_INIT_BACKEND] = ctypes.cast(self._callbacks[1], ctypes.c_void_p)

    @property
    def address(self) -> int:
        return ctypes.addressof(self.struct)
