"""Issue 9: SIGKILL a real `power serve` at random points of creates and pulls, 20 times, then
restart it: the store holds no stale temporary data, lists no broken model, and a retried pull
resumes where the killed ones stopped."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
import trio

from power.registry.partial import read_record
from power.registry.push import push_model
from power.registry.store import Store
from tests.serving import PowerServer, broken_models, referenced, size_of, stale_data
from tests.test_pull_push import build_model

N_KILLS = 20
MiB = 1024 * 1024


def _start(url: str, path: str, body: dict, events: list[dict]) -> threading.Thread:
    """POST a streamed operation in a thread; its status lines go to `events` (the connection
    breaks when the server is killed)."""

    def run() -> None:
        try:
            with httpx.stream("POST", url + path, json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line:
                        events.append(json.loads(line))
        except httpx.HTTPError as error:
            events.append({"broken": str(error)})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.registry
def test_sigkills_during_create_and_pull_leave_no_stale_data(
    registry_server: str, tmp_path: Path, gemma_gguf: Path
) -> None:
    source = Store(tmp_path / "source")
    pulled = f"{registry_server}/library/crash-pull:latest"
    manifest = build_model(source, pulled, model_size=160 * MiB)
    trio.run(lambda: push_model(source, pulled, insecure=True))
    pulled_hex = {digest.removeprefix("sha256:") for digest in manifest.digests()}
    model_digest = manifest.layers[0].digest
    model_hex = model_digest.removeprefix("sha256:")

    store = tmp_path / "models"
    store.mkdir()
    rng = random.Random(9)
    outcomes = []
    n_stale = stale_bytes = 0
    for i_kill in range(N_KILLS):
        server = PowerServer(store, name="crash").wait_ready()
        assert stale_data(store, resumable=pulled_hex) == [], outcomes  # swept at start-up
        events: list[dict] = []
        try:
            if i_kill % 2 == 0:
                # the model blob is added anew each time (a 253 MB copy), then text layers
                operation = "create"
                httpx.request("DELETE", server.url + "/api/delete", json={"model": "crashed"})
                body = {"model": "crashed", "from": str(gemma_gguf), "system": f"round {i_kill}"}
                thread = _start(server.url, "/api/create", body, events)
                time.sleep(rng.uniform(0.05, 2.0))
            else:
                # killed at a random point of the model blob's download (resumed next time)
                operation = "pull"
                httpx.request("DELETE", server.url + "/api/delete", json={"model": pulled})
                thread = _start(
                    server.url, "/api/pull", {"model": pulled, "insecure": True}, events
                )
                target = rng.uniform(0.05, 0.95) * manifest.layers[0].size
                deadline = time.monotonic() + 60
                while thread.is_alive() and time.monotonic() < deadline:
                    if any(
                        e.get("completed", 0) >= target
                        for e in events
                        if e.get("digest") == model_digest
                    ):
                        break
                    time.sleep(0.01)
        finally:
            server.kill()
        thread.join()
        last = events[-1] if events else {}
        outcomes.append(f"{operation}: {last.get('status') or 'killed'}")
        left = stale_data(store, resumable=pulled_hex)
        n_stale += len(left)
        stale_bytes += size_of(store, left)

    with PowerServer(store, name="crash") as server:
        # the start-up prune has run before the server answered
        assert stale_data(store, resumable=pulled_hex) == [], outcomes
        assert broken_models(server.url, store) == []
        partial = store / "blobs" / f"sha256-{model_hex}-partial"
        record = read_record(partial)
        events = []
        _start(server.url, "/api/pull", {"model": pulled, "insecure": True}, events).join()
        assert events[-1] == {"status": "success"}, events
        first = next(e for e in events if e.get("digest") == manifest.layers[0].digest)
        assert record is not None  # the last kill was in a pull's download
        assert first["completed"] == record.completed > 0  # resumed where it stopped
        assert stale_data(store) == []
        assert referenced(store) >= pulled_hex
        assert broken_models(server.url, store) == []
    print(
        f"\nSUMMARY {N_KILLS} kills ({', '.join(outcomes)}) left {n_stale} stale entries"
        f" ({stale_bytes / MiB:.0f} MiB), each removed by the next start;"
        f" the retried pull resumed at {record.completed / MiB:.0f} MiB"
    )
