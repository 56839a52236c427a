"""Issue 9: SIGKILL a real `power serve` at random points of creates and pulls, 20 times, then
restart it: the store holds no stale temporary data, lists no broken model, and a retried pull
resumes where the killed ones stopped."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
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
#: How long a request may take on a busy machine before the test gives up on it: generous, since
#: nothing here measures speed (a slow machine only moves the points where the kills land).
PATIENCE = 600


def _start(
    url: str,
    path: str,
    body: dict,
    events: list[dict],
    on_event: Callable[[dict], None] | None = None,
) -> threading.Thread:
    """POST a streamed operation in a thread; its status lines go to `events`, and to
    `on_event` as soon as each arrives (the connection breaks when the server is killed)."""

    def run() -> None:
        try:
            with httpx.stream("POST", url + path, json=body, timeout=PATIENCE) as response:
                for line in response.iter_lines():
                    if line:
                        events.append(json.loads(line))
                        if on_event is not None:
                            on_event(events[-1])
        except httpx.HTTPError as error:
            events.append({"broken": str(error)})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _kill_when(server: PowerServer, digest: str, completed: float) -> Callable[[dict], None]:
    """An `on_event` that kills `server` once the download of `digest` reaches `completed` bytes,
    at once in the thread reading the progress (another thread polling the events on a busy
    machine may look only after the download has ended)."""

    def on_event(event: dict) -> None:
        if event.get("digest") == digest and event.get("completed", 0) >= completed:
            server.kill()

    return on_event


def _delete(url: str, model: str) -> None:
    response = httpx.request("DELETE", url + "/api/delete", json={"model": model}, timeout=PATIENCE)
    assert response.status_code in (200, 404), response.text


@pytest.mark.slow
@pytest.mark.registry
@pytest.mark.timeout(3600)  # 21 starts and 20 operations; a busy machine may take long
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
                _delete(server.url, "crashed")
                body = {"model": "crashed", "from": str(gemma_gguf), "system": f"round {i_kill}"}
                thread = _start(server.url, "/api/create", body, events)
                time.sleep(rng.uniform(0.05, 2.0))
            else:
                # killed at a random point of the model blob's download (resumed next time):
                # by the thread reading the progress, as soon as the download reaches it
                operation = "pull"
                _delete(server.url, pulled)
                target = rng.uniform(0.05, 0.95) * manifest.layers[0].size
                thread = _start(
                    server.url,
                    "/api/pull",
                    {"model": pulled, "insecure": True},
                    events,
                    on_event=_kill_when(server, model_digest, target),
                )
                thread.join(PATIENCE)
        finally:
            server.kill()
        thread.join()
        last = events[-1] if events else {}
        outcomes.append(f"{operation}: {last.get('status') or 'killed'}")
        assert "error" not in last, (outcomes, last)
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
