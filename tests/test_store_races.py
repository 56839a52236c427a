"""Processes and threads sharing one store: file locks, sessions and pins, what prune removes
after a crash, races of create, copy and delete, downloads shared across processes, and error
messages without server paths. The other process is tests/store_worker.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import trio

from power.registry import models
from power.registry.create import CreateError, CreateRequest
from power.registry.locks import FileLock
from power.registry.names import ModelName
from power.registry.partial import read_record
from power.registry.pull import pull_model
from power.registry.push import push_model
from power.registry.store import ModelNotFoundError, Store, StoreError
from tests.serving import stale_data
from tests.test_pull_push import CountingTransport, build_model, unique_name

WORKER = Path(__file__).resolve().parent / "store_worker.py"
MiB = 1024 * 1024


class Worker:
    """tests/store_worker.py in a subprocess, read line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(WORKER.parent.parent)},
        )

    def read(self) -> dict:
        line = self.process.stdout.readline()
        assert line, f"the worker exited with {self.process.wait()}"
        return json.loads(line)

    def read_until(self, key: str) -> dict:
        while key not in (message := self.read()):
            pass
        return message

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def lines(self) -> Iterator[dict]:
        for line in self.process.stdout:
            yield json.loads(line)
        assert self.process.wait() == 0


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


def tiny_gguf(path: Path, salt: str) -> Path:
    """A minimal GGUF model file; `salt` makes its digest unique."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("general.file_type", 1)
    writer.add_string("general.name", salt)
    writer.add_tensor("blk.0.weight", np.zeros((16,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_no_broken_model(store: Store) -> None:
    """Every listed model's blobs are in the store, and each resolves."""
    for stored in store.list_models():
        for digest in stored.manifest.digests():
            assert store.has_blob(digest), f"{stored.name.display} lacks {digest}"
        models.resolve(store, stored.name)


def assert_no_path(message: str, store: Store) -> None:
    assert str(store.root) not in message and os.path.realpath(store.root) not in message
    assert ".tmp" not in message and "/blobs/" not in message


# ---------------------------------------------------------------- locks and sessions


def test_a_file_lock_excludes_other_processes_until_its_holder_dies(
    tmp_path: Path, workers: list[Worker]
) -> None:
    path = tmp_path / "locks" / "a.lock"
    holder = Worker("lock", str(path))
    workers.append(holder)
    holder.read_until("ready")
    lock = FileLock(path, remove_on_release=True)
    assert not lock.acquire(blocking=False)
    holder.kill()
    assert lock.acquire(blocking=False)
    # in this process too, a second lock object on the same file is excluded
    assert not FileLock(path).acquire(blocking=False)
    lock.release()
    assert not path.exists()


def test_a_killed_process_leaves_nothing_after_prune(tmp_path: Path, workers: list[Worker]) -> None:
    store = Store(tmp_path / "models")
    data = os.urandom(1000)
    holder = Worker("hold", str(store.root), data.hex())
    workers.append(holder)
    ready = holder.read_until("ready")
    digest, token = ready["digest"], ready["token"]
    assert ready["new"]
    # alive: its pin keeps the blob from a targeted removal and from prune, whatever the grace
    assert store.remove_unreferenced([digest]) == []
    assert digest not in store.prune(grace_seconds=0)
    assert store.has_blob(digest)
    assert (store.root / ".tmp" / token / "blob-half-written").exists()

    holder.kill()
    removed = store.prune()  # the default grace: the dead create's blob goes all the same
    assert digest in removed
    assert not store.has_blob(digest)
    assert not (store.root / ".tmp" / token).exists()
    assert not (store.root / ".locks" / f"session-{token}").exists()


def test_a_kill_at_any_point_of_a_session_rewrite_keeps_the_new_marks(
    tmp_path: Path, workers: list[Worker]
) -> None:
    """A process is killed before or after each call its session rewrite makes, having added a
    blob (marked `new`) and then pinning something else: prune removes that blob all the same.
    A file truncated then rewritten in place lost every mark to a kill between the two, and
    the dead create's blob stayed as an unreferenced blob (tests/test_store_crash.py's flake)."""
    worker = Worker("kill-in-rewrite", str(tmp_path / "models"))
    workers.append(worker)
    points = list(worker.lines())
    assert points[-1]["killed"] is False and all(p["killed"] for p in points[:-1]), points
    assert len(points) > 10, points  # store lock, staging file, rename, ...
    assert [p for p in points if p["blob_left"] or p["stale"]] == [], points


def test_pins_keep_a_blob_that_another_process_deletes(
    tmp_path: Path, gemma_gguf: Path, workers: list[Worker]
) -> None:
    store = Store(tmp_path / "models")
    gguf_path = tiny_gguf(tmp_path / "a.gguf", "pinned")
    models.create(store, CreateRequest(model="a", from_=str(gguf_path)))
    digests = models.resolve(store, "a").manifest.digests()
    with store.pins() as pins:
        pins.add(digests)
        deleter = Worker("loop", str(store.root), "delete", "1", "a")
        workers.append(deleter)
        assert [m["outcome"] for m in deleter.lines()] == ["ok"]
        assert all(store.has_blob(d) for d in digests)  # pinned here: kept
        assert store.read_manifest(ModelName.parse("a")) is None
    assert set(store.prune(grace_seconds=0)) >= set(digests)


# ---------------------------------------------------------------- races


def _record_outcome(results: dict, key: str, function, *args) -> None:  # noqa: ANN001
    try:
        function(*args)
        results[key] = None
    except BaseException as error:  # noqa: BLE001
        results[key] = error


def test_create_from_a_model_racing_its_delete(tmp_path: Path) -> None:
    """Threads: `create b FROM a` against `delete a`. Each ends in success or a 404, never a
    missing file; b, when created, is whole."""
    store = Store(tmp_path / "models")
    outcomes: list[str] = []
    for i_round in range(12):
        gguf_path = tiny_gguf(tmp_path / f"a{i_round}.gguf", f"round {i_round}")
        models.create(store, CreateRequest(model="a", from_=str(gguf_path), system=f"A{i_round}"))
        results: dict[str, BaseException | None] = {}
        threads = [
            threading.Thread(
                target=_record_outcome,
                args=(
                    results,
                    "create",
                    models.create,
                    store,
                    CreateRequest(model="b", from_="a", system="B"),
                ),
            ),
            threading.Thread(
                target=_record_outcome, args=(results, "delete", models.delete, store, "a")
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results["delete"] is None
        error = results["create"]
        assert error is None or isinstance(error, ModelNotFoundError), repr(error)
        outcomes.append("ok" if error is None else "404")
        assert_no_broken_model(store)
        if error is None:
            models.delete(store, "b")
    assert set(outcomes) <= {"ok", "404"}
    assert stale_data(store.root) == []


def test_create_copy_and_delete_of_one_name_racing_across_processes(
    tmp_path: Path, workers: list[Worker]
) -> None:
    """Two processes: one creates `x` (from a GGUF file, then from a model) and copies it,
    the other deletes `x`, 15 rounds each. Every outcome is a success or a 404; the store
    never lists a broken model; prune leaves no temporaries."""
    store = Store(tmp_path / "models")
    gguf_path = tiny_gguf(tmp_path / "x.gguf", "x")
    models.create(store, CreateRequest(model="base", from_=str(gguf_path)))
    root = str(store.root)
    creator = Worker("loop", root, "create", "15", "x", "base", "a system prompt")
    copier = Worker("loop", root, "copy", "15", "x", "y")
    deleter = Worker("loop", root, "delete", "15", "x")
    workers.extend([creator, copier, deleter])
    outcomes = [m for worker in (creator, copier, deleter) for m in worker.lines()]
    assert {m["outcome"] for m in outcomes} <= {"ok", "ModelNotFoundError"}, outcomes
    for message in outcomes:
        assert_no_path(message.get("message", ""), store)
    assert_no_broken_model(store)
    store.prune()
    assert stale_data(store.root) == []  # no blob of a create whose model a delete removed


def test_resolve_racing_delete_and_recreate_is_whole_or_not_found(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    paths = [tiny_gguf(tmp_path / f"m{i}.gguf", f"version {i}") for i in range(2)]
    models.create(store, CreateRequest(model="m", from_=str(paths[0])))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                models.delete(store, "m")
            except ModelNotFoundError:
                pass
            models.create(store, CreateRequest(model="m", from_=str(paths[i % 2])))

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            try:
                resolved = models.resolve(store, "m")
                assert resolved.info is not None
            except ModelNotFoundError:
                pass
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
    finally:
        stop.set()
        thread.join()
    assert errors == []


# ---------------------------------------------------------------- downloads across processes


@pytest.mark.registry
async def test_a_second_process_waits_for_the_download_of_a_blob(
    registry_server: str, tmp_path: Path, workers: list[Worker]
) -> None:
    source = Store(tmp_path / "source")
    name = unique_name(registry_server, "twoproc")
    manifest = build_model(source, name, model_size=24 * MiB)
    await push_model(source, name, insecure=True)
    model_layer = manifest.layers[0]
    store = Store(tmp_path / "models")

    # this process fetches the model blob and stops half-way, holding its download lock
    transport = CountingTransport(pause_after=12 * MiB)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: pull_model(store, name, insecure=True, transport=transport))
        await transport.paused.wait()
        other = Worker("pull", str(store.root), name)
        workers.append(other)
        status = f"pulling {model_layer.digest.removeprefix('sha256:')[:12]}"
        # the other process reports the model blob while it waits for this one's download
        await trio.to_thread.run_sync(
            lambda: next(
                m for m in iter(other.read, None) if m.get("event", {}).get("status") == status
            )
        )
        transport.resume.set()
    await transport.close_inner()
    fetched = (await trio.to_thread.run_sync(other.read_until, "fetched"))["fetched"]
    assert other.process.wait() == 0
    assert fetched.get(model_layer.digest, 0) == 0  # it used this process's download
    assert transport.blob_bytes[model_layer.digest] == model_layer.size
    assert store.read_manifest_bytes(ModelName.parse(name)) == manifest.to_json()


@pytest.mark.registry
async def test_a_download_killed_in_one_process_is_resumed_by_another(
    registry_server: str, tmp_path: Path, workers: list[Worker]
) -> None:
    source = Store(tmp_path / "source")
    name = unique_name(registry_server, "killed")
    manifest = build_model(source, name, model_size=40 * MiB)
    await push_model(source, name, insecure=True)
    model_layer = manifest.layers[0]
    store = Store(tmp_path / "models")

    other = Worker("pull", str(store.root), name, str(30 * MiB))
    workers.append(other)
    await trio.to_thread.run_sync(other.read_until, "paused")
    other.kill()
    record = read_record(store.partial_path(model_layer.digest), model_layer.digest)
    assert record is not None and record.completed >= 8 * MiB

    transport = CountingTransport()
    try:
        await pull_model(store, name, insecure=True, transport=transport)
    finally:
        await transport.close_inner()
    assert transport.blob_bytes[model_layer.digest] == model_layer.size - record.completed
    assert (
        store.blob_path(model_layer.digest).read_bytes()
        == source.blob_path(model_layer.digest).read_bytes()
    )
    store.prune()
    assert not list((store.root / ".locks").glob("download-*"))
    assert not [p for p in store.blobs_dir.iterdir() if "partial" in p.name]


# ---------------------------------------------------------------- messages


def test_errors_name_no_server_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm_dir: Path
) -> None:
    store = Store(tmp_path / "models")
    # converter errors about uploaded files, which the server keeps in its temporaries
    config = store.add_blob_bytes((minilm_dir / "config.json").read_bytes())
    garbage = store.add_blob_bytes(b"\xff" * 64)
    weights = store.add_blob_bytes((minilm_dir / "model.safetensors").read_bytes())
    for files, message in (
        ({"config.json": config, "model.safetensors": garbage}, "model.safetensors is not a"),
        ({"model.safetensors": weights}, "the uploaded files has no config.json"),
    ):
        with pytest.raises(CreateError) as caught:
            models.create(store, CreateRequest(model="broken", files=files))
        assert message in str(caught.value)
        assert_no_path(str(caught.value), store)

    # an OSError deep in a create
    def fail(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise FileNotFoundError(2, "No such file or directory", str(store.root / ".tmp" / "x"))

    monkeypatch.setattr(Store, "write_manifest", fail)
    gguf_path = tiny_gguf(tmp_path / "t.gguf", "t")
    with pytest.raises(StoreError) as caught:
        models.create(store, CreateRequest(model="t", from_=str(gguf_path)))
    assert str(caught.value) == "create model: No such file or directory"


def test_copy_over_a_model_drops_the_blobs_only_it_used(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    gguf_path = tiny_gguf(tmp_path / "c.gguf", "c")
    models.create(store, CreateRequest(model="one", from_=str(gguf_path), system="one"))
    models.create(store, CreateRequest(model="two", from_=str(gguf_path), system="two"))
    models.copy(store, "one", "two")
    assert stale_data(store.root) == []
    assert models.resolve(store, "two").system == "one"
