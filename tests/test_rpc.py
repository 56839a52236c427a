"""Models split over ggml RPC workers: the layer split and the worker probe as pure functions,
the `rpc-worker` CLI, then two real `power rpc-worker` processes on loopback serving a real
`power serve` (gemma-3-270m), one of them killed in the middle of a stream."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import numpy as np
import pytest
import trio

from conftest import GEMMA, free_port, populate_store, run_power_server
from power import config
from power.cli.main import main
from power.engine import rpc, split
from power.engine.loadspec import LoadSpec
from power.engine.model import LoadedModel
from power.engine.rpc import RemoteDevice, WorkerStatus
from power.engine.types import EngineError
from power.options import Options

# ---------------------------------------------------------------- configuration


def test_endpoints_parse_and_refuse_what_ggml_cannot_use() -> None:
    assert config.parse_rpc_servers(None) == ()
    assert config.parse_rpc_servers(" 10.0.0.5:50052, worker-2:6000 ") == (
        "10.0.0.5:50052",
        "worker-2:6000",
    )
    for bad in ("10.0.0.5", "[::1]:50052", "::1:50052", "h:0", "h:70000", "h:x", "a:1,a:1"):
        with pytest.raises(config.SettingError):
            config.parse_rpc_servers(bad)


def test_tensor_split_weights() -> None:
    assert config.parse_tensor_split("") == ()
    assert config.parse_tensor_split("1,2.5,0") == (1.0, 2.5, 0.0)
    for bad in ("a,b", "-1,2", "0,0"):
        with pytest.raises(config.SettingError):
            config.parse_tensor_split(bad)
    assert config.parse_tensor_split("1,1,1", 2) == (1.0, 1.0, 1.0)
    with pytest.raises(config.SettingError, match="3 weights for this machine and 1 RPC servers"):
        config.parse_tensor_split("1,1,1", 1)


def test_a_weight_stays_with_its_worker_when_another_is_left_out() -> None:
    configured = ("a:1", "b:1", "c:1")
    local, weights = rpc.endpoint_weights(("a:1", "c:1"), configured, (2.0, 1.0, 5.0, 3.0))
    assert local == 2.0 and weights == {"a:1": 1.0, "c:1": 3.0}
    local, weights = rpc.endpoint_weights(("b:1",), configured, ())
    assert local == 1.0 and weights == {"b:1": 1.0}


def _remote(*weights: float) -> list[RemoteDevice]:
    return [RemoteDevice(f"RPC{i}", f"h:{i + 1}", w) for i, w in enumerate(weights)]


@pytest.mark.parametrize(
    ("weights", "local_weight", "num_gpu", "expected"),
    [
        # gemma-3-270m: 18 layers + the output layer; equal shares by default
        ((1, 1), 1.0, -1, [6, 7, 6]),
        ((1, 1), 0.0, -1, [0, 10, 9]),  # all on the workers
        ((2, 1), 1.0, -1, [5, 10, 4]),
        ((1, 0), 1.0, -1, [10, 9, 0]),
        ((1, 1), 1.0, 0, [19, 0, 0]),  # num_gpu fixes the offloaded layers
        ((1, 1), 1.0, 1, [18, 1, 0]),  # the output layer alone goes to the first device
        ((1, 1), 1.0, 99, [0, 10, 9]),
    ],
)
def test_layer_split_follows_llama_cpp(
    weights: tuple[float, ...], local_weight: float, num_gpu: int, expected: list[int]
) -> None:
    plan = rpc.plan_split(18, _remote(*weights), local_weight, num_gpu=num_gpu)
    assert [share.layers for share in plan.placement] == expected
    assert plan.n_gpu_layers == 19 - expected[0]
    assert plan.tensor_split == weights
    assert sum(share.share for share in plan.placement) == pytest.approx(1.0)


def test_no_remote_weight_keeps_everything_local() -> None:
    plan = rpc.plan_split(18, _remote(0, 0))
    assert plan.n_gpu_layers == 0 and [s.device for s in plan.placement] == ["CPU"]


# ---------------------------------------------------------------- probing


@contextlib.contextmanager
def _fake_worker(reply: bytes | None) -> Iterator[str]:
    """A listener that answers one HELLO with `reply` (None: accepts and stays silent)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1 + 8 + 24)
            if reply is not None:
                conn.sendall(struct.pack("<Q", len(reply)) + reply)
            done.wait(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_probe_tells_ready_busy_incompatible_and_down() -> None:
    with _fake_worker(bytes([7, 0, 0, 0]) + bytes(24)) as endpoint:
        assert rpc.probe(endpoint) is WorkerStatus.READY
    with _fake_worker(bytes([6, 0, 0, 0]) + bytes(24)) as endpoint:
        assert rpc.probe(endpoint) is WorkerStatus.INCOMPATIBLE
    with _fake_worker(None) as endpoint:
        assert rpc.probe(endpoint, timeout=0.3) is WorkerStatus.BUSY
    assert rpc.probe(f"127.0.0.1:{free_port()}") is WorkerStatus.DOWN


# ---------------------------------------------------------------- the CLI (as tests/test_cli.py)


@pytest.mark.parametrize("argv", [["help", "rpc-worker"], ["rpc-worker", "--help"]])
def test_rpc_worker_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "power rpc-worker [options]" in text
    for flag in ("--host", "--port", "--threads", "--mem", "--device", "--cache"):
        assert flag in text
    assert "NO authentication" in text and "127.0.0.1" in text


def test_serve_usage_documents_rpc(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "serve"]) == 0
    text = capsys.readouterr().out
    assert "--rpc=SERVERS" in text and "--tensor-split=WEIGHTS" in text
    assert "POWER_RPC_SERVERS" in text and "POWER_TENSOR_SPLIT" in text
    assert main([]) == 0
    assert "\n  rpc-worker" in capsys.readouterr().out


def test_serve_refuses_a_bad_rpc_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWER_RPC_SERVERS", "")  # restored after the test: serve --rpc sets it
    assert main(["serve", "--rpc", "worker-without-port"]) == 1
    assert "Error: invalid RPC server 'worker-without-port'" in capsys.readouterr().err
    monkeypatch.setenv("POWER_TENSOR_SPLIT", "")
    assert main(["serve", "--rpc", "10.0.0.5:50052", "--tensor-split", "1,1,1"]) == 1
    assert "3 weights for this machine and 1 RPC servers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rpc-worker", "--host", "localhost"], "--host must be an IPv4 address"),
        (["rpc-worker", "--port", "99999"], "--port must be 1-65535"),
        (["rpc-worker", "--mem", "lots"], "invalid --mem 'lots'"),
    ],
)
def test_rpc_worker_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"Error: {message}" in err and "Traceback" not in err


# ---------------------------------------------------------------- real workers


def start_worker(port: int, log_path: Path, *extra: str) -> subprocess.Popen:
    """A `power rpc-worker` subprocess on loopback, returned once it answers HELLO."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "power", "rpc-worker", "--port", str(port), *extra],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 60
    while rpc.probe(f"127.0.0.1:{port}", timeout=1) is not WorkerStatus.READY:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"rpc-worker did not start: {log_path.read_text()}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_worker_stops_at_once_on_sigterm_and_sigint(tmp_path: Path) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        worker = start_worker(free_port(), tmp_path / "worker.log", "--threads", "1")
        t0 = time.monotonic()
        worker.send_signal(signum)
        assert worker.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 2
    log = (tmp_path / "worker.log").read_text()
    assert "no authentication" in log and "SIGTERM, stopping" in log and "SIGINT, stopping" in log


@pytest.mark.slow
def test_worker_advertises_mem(tmp_path: Path) -> None:
    """A worker started with --mem reports that much memory to a client (llama.cpp's client
    divides layers by it when given no tensor split)."""
    port = free_port()
    worker = start_worker(port, tmp_path / "worker.log", "--threads", "1", "--mem", "3G")
    try:
        code = (
            "import sys; from power.engine import rpc\n"
            f"d = rpc.remote_devices('127.0.0.1:{port}')[0]\n"
            "print(rpc.device_memory(d))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert out.strip() == f"({3 << 30}, {3 << 30})"
    finally:
        stop(worker)


PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"


def reference_text(gguf: Path, prompt: str, n_predict: int) -> str:
    """The greedy text of a purely local load, decoded by a bare loop, with the CPU kernels a split
    model uses everywhere (no repacked weights: RPC devices cannot repack) and the context
    `power serve` creates (num_ctx 1024 from the test model, 4 sequences, unified KV cache)."""
    from power.engine.llama import Batch, ContextParams, LlamaContext, LlamaModel, ModelLoadParams

    model = LlamaModel(gguf, ModelLoadParams(cpu_repack=False))
    context = LlamaContext(
        model, ContextParams(n_ctx_per_seq=1024, n_seq_max=4, n_threads=2, kv_unified=True)
    )
    batch = Batch(context.n_batch, 1)
    try:
        tokens = model.tokenize(prompt)
        batch.add(0, tokens, 0, True)
        generated: list[int] = []
        while len(generated) < n_predict:
            assert context.decode(batch) == 0
            token = int(np.argmax(context.logits_row(batch.n_tokens - 1)))
            if model.is_eog(token):
                break
            generated.append(token)
            batch.clear()
            batch.add(0, [token], len(tokens) + len(generated) - 1, True)
        return model.detokenize(generated)
    finally:
        batch.close()
        context.close()
        model.close()


def generate(url: str, n_predict: int) -> dict:
    response = httpx.post(
        f"{url}/api/generate",
        json={
            "model": GEMMA,
            "prompt": PROMPT,
            "raw": True,
            "stream": False,
            "options": {"num_predict": n_predict, "temperature": 0},
        },
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def split_server(tmp_path: Path, gemma_gguf: Path) -> Iterator[tuple[str, list, list[str]]]:
    """Two `power rpc-worker` processes on loopback and a `power serve` that uses both."""
    store = tmp_path / "models"
    populate_store(store, gemma_gguf, None, None)
    ports = [free_port(), free_port()]
    workers = [start_worker(p, tmp_path / f"worker-{p}.log", "--threads", "1") for p in ports]
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    try:
        env = {"POWER_RPC_SERVERS": ",".join(endpoints), "POWER_KEEP_ALIVE": "-1"}
        with run_power_server(store, env) as url:
            yield url, workers, endpoints
    finally:
        for worker in workers:
            stop(worker)


@pytest.mark.slow
def test_split_model_answers_like_a_local_load_and_survives_a_dead_worker(
    split_server: tuple[str, list, list[str]], gemma_gguf: Path
) -> None:
    url, workers, endpoints = split_server
    expected = reference_text(gemma_gguf, PROMPT, 32)

    # greedy text over two workers = a purely local load with the same kernels
    first = generate(url, 32)
    assert first["response"] == expected and first["eval_count"] == 32
    devices = httpx.get(f"{url}/api/ps").json()["models"][0]["devices"]
    assert [(d["device"], d["endpoint"], d["layers"]) for d in devices] == [
        ("CPU", None, 6),
        ("RPC0", endpoints[0], 7),
        ("RPC1", endpoints[1], 6),
    ]
    health = httpx.get(f"{url}/health").json()
    assert health["loaded_models"][0]["devices"] == devices

    # a worker killed in the middle of a stream ends that stream with an error
    lines = []
    with httpx.stream(
        "POST",
        f"{url}/api/generate",
        json={"model": GEMMA, "prompt": PROMPT, "raw": True, "options": {"num_predict": 2000}},
        timeout=300,
    ) as response:
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(json.loads(line))
            if len(lines) == 3:
                os.kill(workers[1].pid, signal.SIGKILL)
    assert "error" in lines[-1], lines[-1]
    assert f"RPC worker {endpoints[1]} went away" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)

    # the server goes on: the next request reloads the model on the worker that is left,
    # and, computed with the same kernels wherever its layers are, answers the same tokens
    again = generate(url, 32)
    assert again["response"] == expected
    devices = httpx.get(f"{url}/api/ps").json()["models"][0]["devices"]
    assert [(d["device"], d["endpoint"], d["layers"]) for d in devices] == [
        ("CPU", None, 10),
        ("RPC0", endpoints[0], 9),
    ]


@pytest.mark.slow
async def test_a_hung_worker_fails_the_decode_after_the_timeout(
    tmp_path: Path, gemma_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped worker still answers TCP (its kernel does): ggml would wait for ever, so the
    host is killed when a call takes longer than CALL_TIMEOUT."""
    monkeypatch.setattr(split, "CALL_TIMEOUT", 3.0)
    ports = [free_port(), free_port()]
    workers = [start_worker(p, tmp_path / f"worker-{p}.log", "--threads", "1") for p in ports]
    spec = attrs.evolve(
        LoadSpec.from_options(gemma_gguf, Options(num_ctx=256, num_thread=2), num_parallel=1),
        rpc_servers=tuple(f"127.0.0.1:{p}" for p in ports),
    )
    greedy = Options(temperature=0, num_predict=4)
    model = await LoadedModel.open(spec)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(model.run)
            assert await model.complete(PROMPT, greedy)
            os.kill(workers[1].pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(EngineError, match="within 3s"):
                await model.complete(PROMPT + " 9,", greedy)
            assert time.monotonic() - t0 < 15
            assert model.context.state is split.SplitState.LOST
    finally:
        model.close()
        os.kill(workers[1].pid, signal.SIGCONT)
        for worker in workers:
            stop(worker)
