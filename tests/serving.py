"""`power serve` processes that tests may SIGKILL, and what a store shared by them must look like
(tests/test_store_crash.py, tests/test_replicas.py)."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import free_port, wait_for_http
from power.registry.manifest import Manifest
from power.registry.partial import read_record

ROOT = Path(__file__).resolve().parent.parent
_BLOB_RE = re.compile(r"sha256-([0-9a-f]{64})")
_PARTIAL_RE = re.compile(r"sha256-([0-9a-f]{64})-partial(\.json)?")


class PowerServer:
    """A `power serve` subprocess on a free loopback port with `store` as its model store."""

    def __init__(
        self, store: Path, env: dict[str, str] | None = None, name: str = "", port: int = 0
    ) -> None:
        self.store = store
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update(
            {
                "POWER_HOST": f"127.0.0.1:{self.port}",
                "POWER_MODELS": str(store),
                "POWER_NUM_PARALLEL": "2",
                "POWER_NUM_THREAD": "1",
                "PYTHONPATH": str(ROOT),
            }
        )
        full_env.update(env or {})
        self.log_path = store.parent / f"server-{name or self.port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "power", "serve"], env=full_env, stdout=log, stderr=log
            )

    def wait_ready(self) -> PowerServer:
        wait_for_http(self.url + "/", self.process, timeout=120)
        return self

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> PowerServer:
        return self.wait_ready()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _held(path: Path) -> bool:
    """Someone holds a flock on `path` (this test process holds none)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def referenced(store: Path) -> set[str]:
    """Hex digests of the blobs the store's manifests reference."""
    digests = set()
    for path in (store / "manifests").glob("*/*/*/*"):
        manifest = Manifest.from_json(path.read_bytes())
        digests |= {digest.removeprefix("sha256:") for digest in manifest.digests()}
    return digests


def stale_data(store: Path, resumable: set[str] = frozenset()) -> list[str]:
    """What in `store` is garbage: temporaries and lock files of dead processes, blobs no
    manifest references (except those of `resumable`, hex digests a retried pull will use),
    partial downloads that cannot be resumed or are not of `resumable`. Empty when clean."""
    stale = []
    locks = store / ".locks"
    live_tokens = set()
    for path in sorted(locks.iterdir()) if locks.is_dir() else []:
        if path.name == "store.lock":
            continue
        if path.name.startswith("session-") and _held(path):
            live_tokens.add(path.name.removeprefix("session-"))
            continue
        stale.append(f".locks/{path.name}")
    temp = store / ".tmp"
    for path in sorted(temp.iterdir()) if temp.is_dir() else []:
        if path.name not in live_tokens:
            stale.append(f".tmp/{path.name}")
    keep = referenced(store)
    blobs = store / "blobs"
    for path in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        if match := _BLOB_RE.fullmatch(path.name):
            if match.group(1) not in keep | set(resumable):
                stale.append(f"blobs/{path.name}")
        elif match := _PARTIAL_RE.fullmatch(path.name):
            partial = blobs / f"sha256-{match.group(1)}-partial"
            if match.group(1) not in resumable or read_record(partial) is None:
                stale.append(f"blobs/{path.name}")
        else:
            stale.append(f"blobs/{path.name}")
    return stale


def size_of(store: Path, names: list[str]) -> int:
    total = 0
    for name in names:
        path = store / name
        paths = path.rglob("*") if path.is_dir() else [path]
        total += sum(p.stat().st_size for p in paths if p.is_file())
    return total


def broken_models(base_url: str, store: Path) -> list[str]:
    """Models /api/tags lists whose blobs are not all in the store or that /api/show refuses."""
    broken = []
    for model in httpx.get(base_url + "/api/tags", timeout=60).json()["models"]:
        name = model["name"]
        parts = name.split("/")
        host, namespace, rest = (
            (parts[0], parts[1], parts[2])
            if len(parts) == 3
            else ("registry.ollama.ai", "library", parts[-1])
        )
        model_name, _, tag = rest.partition(":")
        manifest_path = store / "manifests" / host / namespace / model_name / (tag or "latest")
        try:
            manifest = Manifest.from_json(manifest_path.read_bytes())
        except FileNotFoundError:
            broken.append(f"{name}: listed without a manifest")
            continue
        missing = [
            d for d in manifest.digests() if not (store / "blobs" / d.replace(":", "-")).exists()
        ]
        if missing:
            broken.append(f"{name}: lacks {missing}")
        response = httpx.post(base_url + "/api/show", json={"model": name}, timeout=60)
        if response.status_code != 200:
            broken.append(f"{name}: show answered {response.status_code} {response.text}")
    return broken
