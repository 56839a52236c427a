"""`power rpc-worker`: serve this machine's CPU (or GPUs) to other machines over ggml's RPC
protocol, the same protocol as llama.cpp's `rpc-server` (either end can be either program).

The server runs in a thread of this process (`ggml_backend_rpc_start_server` never returns);
the main thread waits for SIGTERM or SIGINT and then ends the process at once, whatever the
server thread is doing: a client connected at that moment sees its connection drop.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp

WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: power rpc-worker listens on {host}, not on loopback.
         The RPC protocol has NO authentication and NO encryption: anyone who can reach
         port {port} can run computations on this machine and read and write its memory.
         Never expose it to an open network; use a private network or a firewall.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


class WorkerError(Exception):
    """A bad option or a port that cannot be bound (reported as one `Error:` line)."""


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # ggml's warnings and errors (a malformed request, a failed allocation) to stderr
    try:
        if level >= 3:
            _err("rpc-worker: " + text.decode("utf-8", "replace").rstrip())
    except Exception:  # noqa: BLE001 - never raise into C
        pass


def parse_bytes(text: str) -> int:
    """`8589934592`, `8G`, `512MiB`... → bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    for suffix, factor in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if value.endswith(suffix):
            value, scale = value[:-1], factor
            break
    try:
        amount = int(float(value) * scale)
    except ValueError:
        raise WorkerError(
            f"invalid --mem {text!r}: expected bytes, e.g. 8G or 8589934592"
        ) from None
    if amount <= 0:
        raise WorkerError("--mem must be positive")
    return amount


def _check_bindable(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise WorkerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_worker(args: dict[str, Any]) -> int:
    """The `power rpc-worker` command (docopt arguments); returns the exit status."""
    from power.engine import rpc

    host = args["--host"]
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise WorkerError(
            f"--host must be an IPv4 address (ggml's server binds IPv4): {host!r}"
        ) from None
    try:
        port = int(args["--port"])
        threads = int(args["--threads"]) if args["--threads"] else (os.cpu_count() or 1)
    except ValueError:
        raise WorkerError("--port and --threads take whole numbers") from None
    if not 0 < port < 65536 or threads < 1:
        raise WorkerError("--port must be 1-65535 and --threads at least 1")
    mem = parse_bytes(args["--mem"]) if args["--mem"] else None
    _check_bindable(host, port)

    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    lib = rpc.ggml()
    rpc.ggml_rpc()  # fails here, clearly, on a build without the RPC backend
    if args["--device"]:
        devices = []
        for name in args["--device"].split(","):
            device = lib.ggml_backend_dev_by_name(name.strip().encode())
            if not device:
                known = [
                    rpc.device_name(lib.ggml_backend_dev_get(i))
                    for i in range(lib.ggml_backend_dev_count())
                ]
                raise WorkerError(f"unknown device {name!r}; this machine has: {', '.join(known)}")
            devices.append(device)
    else:
        devices = rpc.local_devices()
    if not devices:
        raise WorkerError("no device to serve")
    advertised = [rpc.AdvertisedDevice(d, mem) for d in devices] if mem else []
    served = [a.address for a in advertised] or devices
    cache_dir = None
    if args["--cache"]:
        cache_dir = str(Path.home() / ".cache" / "power" / "rpc")
        os.makedirs(cache_dir, exist_ok=True)

    if address.is_loopback:
        _err(
            "power rpc-worker: the RPC protocol has no authentication and no encryption; "
            "listening on loopback only (use --host to serve a private network)"
        )
    else:
        _err(WARNING.format(host=host, port=port))
    for device in devices:
        free, total = rpc.device_memory(device)
        shown = mem if mem else total
        _err(f"power rpc-worker: serving {rpc.device_name(device)}, {shown / 2**20:.0f} MiB")

    stopped = threading.Event()

    def serve() -> None:
        try:
            rpc.start_server(f"{host}:{port}", served, threads, cache_dir)
        finally:
            stopped.set()

    # Whichever thread the kernel hands SIGTERM or SIGINT to (often one busy in C), Python's
    # handler writes the signal number to the wakeup pipe, and the main thread wakes at once.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    threading.Thread(target=serve, name="rpc-server", daemon=True).start()
    probe_host = "127.0.0.1" if address.is_unspecified else host
    announced = False
    deadline = time.monotonic() + 30
    received = None
    while not stopped.is_set():
        ready, _, _ = select.select([wake_read], [], [], 0.05 if not announced else 0.5)
        if ready:
            received = os.read(wake_read, 1)[0]
            break
        if (
            not announced
            and time.monotonic() < deadline
            and rpc.probe(f"{probe_host}:{port}", timeout=1.0) is rpc.WorkerStatus.READY
        ):
            announced = True
            _err(
                f"power rpc-worker listening on {host}:{port} "
                f"(ggml RPC protocol {rpc.PROTO_MAJOR}.{rpc.PROTO_MINOR}, {threads} threads)"
            )
    sys.stdout.flush()
    if received is not None:
        _err(f"power rpc-worker: {signal.Signals(received).name}, stopping")
        sys.stderr.flush()
        os._exit(0)  # the server thread never returns; ending the process is the only stop
    _err(f"Error: the RPC server stopped (could it listen on {host}:{port}?)")
    return 1


def main(args: dict[str, Any]) -> int:
    try:
        return run_worker(args)
    except WorkerError as exc:
        _err(f"Error: {exc}")
        return 1
