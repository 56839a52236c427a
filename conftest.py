"""Shared pytest fixtures: the real model files, a real registry server, a real `power serve`.

Model files are prepared once by `scripts/models.py` into `.models/` (git-ignored) from their PyPI
packages; the registry is Debian's `docker-registry` on a free loopback port; the server is a
`power serve` subprocess on a free loopback port with a temporary store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))

import models as test_models  # noqa: E402  (scripts/models.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Poll `url` until it answers (a start-up wait, not a test timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


# ---------------------------------------------------------------- model files


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return test_models.DEFAULT_DIR


@pytest.fixture(scope="session")
def gemma_gguf(models_dir: Path) -> Path:
    """The base model gemma-3-270m Q4_K_M (no chat template)."""
    return test_models.gemma(models_dir)


@pytest.fixture(scope="session")
def qwen_gguf(models_dir: Path) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: a real chat template with tools."""
    return test_models.qwen(models_dir)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 (safetensors)."""
    return test_models.minilm_folder()


@pytest.fixture(scope="session")
def minilm_gguf(models_dir: Path) -> Path:
    """all-MiniLM-L6-v2 converted to GGUF by power's own converter."""
    return test_models.minilm(models_dir)


# ---------------------------------------------------------------- registry server


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OCI registry (Debian's docker-registry) on loopback; yields `127.0.0.1:PORT`."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(binary):
        pytest.fail("docker-registry is not installed (the test command installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v2/", process, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---------------------------------------------------------------- power serve


#: The process id of each running `power serve`, by base URL (for tests that measure it).
SERVER_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def run_power_server(
    store: Path, env: dict[str, str] | None = None, *, bind: str = "127.0.0.1"
) -> Iterator[str]:
    """Start `power serve` on a free port with `store` as its model store; yields
    `http://127.0.0.1:PORT`. `bind` is the address it listens on (`[::ffff:127.0.0.1]`,
    `0.0.0.0`…): one that 127.0.0.1 reaches."""
    port = free_port()
    full_env = dict(os.environ)
    full_env.update(
        {
            "POWER_HOST": f"{bind}:{port}",
            "POWER_MODELS": str(store),
            "POWER_NUM_PARALLEL": "4",
            "POWER_NUM_THREAD": "2",
        }
    )
    full_env.update(env or {})
    log_path = store.parent / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "power", "serve"], env=full_env, stdout=log, stderr=log
        )
        base_url = f"http://127.0.0.1:{port}"
        SERVER_PIDS[base_url] = process.pid
        try:
            wait_for_http(base_url + "/", process)
            yield base_url
        finally:
            SERVER_PIDS.pop(base_url, None)
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def power_server(tmp_path: Path) -> Iterator[str]:
    """A fresh `power serve` with an empty store; yields its base URL."""
    store = tmp_path / "models"
    store.mkdir()
    with run_power_server(store) as url:
        yield url


# ---------------------------------------------------------------- a populated store and server

GEMMA_CHAT_TEMPLATE = """{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $m.Role "user" }}<start_of_turn>user
{{ $m.Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq $m.Role "assistant" }}<start_of_turn>model
{{ $m.Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

#: Names the shared test store holds.
GEMMA = "gemma3:270m"
QWEN = "qwen2.5-coder:0.5b"
MINILM = "all-minilm:latest"


def populate_store(store_root: Path, gemma: Path, qwen: Path | None, minilm: Path | None) -> None:
    """Import the real test models into a store at `store_root` (offline, no server)."""
    from power.registry.models import import_gguf
    from power.registry.store import Store

    store = Store(store_root)
    import_gguf(
        store,
        GEMMA,
        gemma,
        template=GEMMA_CHAT_TEMPLATE,
        parameters={"stop": ["<end_of_turn>"], "temperature": 0.0, "num_ctx": 1024},
    )
    if qwen is not None:
        # no TEMPLATE layer: the GGUF's Jinja chat template (with its tools section) is used
        import_gguf(store, QWEN, qwen, parameters={"temperature": 0.0, "num_ctx": 2048})
    if minilm is not None:
        import_gguf(store, MINILM, minilm)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, gemma_gguf, qwen_gguf, minilm_gguf) -> Path:
    root = tmp_path_factory.mktemp("store") / "models"
    populate_store(root, gemma_gguf, qwen_gguf, minilm_gguf)
    return root


@pytest.fixture(scope="session")
def server(model_store: Path) -> Iterator[str]:
    """One `power serve` shared by the HTTP tests, with gemma, qwen and MiniLM in its store."""
    with run_power_server(model_store, {"POWER_NUM_PARALLEL": "4"}) as url:
        yield url
