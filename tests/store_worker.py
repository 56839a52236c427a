"""A second process for the store's cross-process tests (tests/test_store_races.py).

    python tests/store_worker.py lock PATH
    python tests/store_worker.py hold STORE HEXDATA
    python tests/store_worker.py pull STORE NAME [PAUSE_AFTER_BYTES]
    python tests/store_worker.py loop STORE OPERATION N ARGS...
    python tests/store_worker.py kill-in-rewrite STORE

It prints one JSON object a line: `{"ready": true}` once it holds what it was asked to hold (then
it sleeps until killed), pull's progress events, `{"paused": true}` when a paused pull reached its
pause, `{"fetched": {digest: bytes}}` at the end of a pull, and for `loop` one
`{"outcome": ...}` per round, for `kill-in-rewrite` one `{"point": ...}` per point killed at.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from power.registry import models  # noqa: E402
from power.registry.create import CreateRequest  # noqa: E402
from power.registry.locks import FileLock  # noqa: E402
from power.registry.pull import pull_model  # noqa: E402
from power.registry.store import Store  # noqa: E402
from tests.serving import stale_data  # noqa: E402


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def sleep_forever() -> None:
    while True:
        time.sleep(60)


class PausingTransport(httpx.AsyncBaseTransport):
    """The real network; counts blob bytes and, past `pause_after` bytes of one blob, says
    `paused` and stops forever (the process is then killed)."""

    def __init__(self, pause_after: int | None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fetched: Counter[str] = Counter()
        self.pause_after = pause_after

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "GET" and "/blobs/sha256:" in request.url.path:
            digest = request.url.path.rsplit("/", 1)[1]
            inner = response.stream

            class Counted(httpx.AsyncByteStream):
                async def __aiter__(stream):  # noqa: N805
                    async for chunk in inner:
                        if (
                            self.pause_after is not None
                            and self.fetched[digest] >= self.pause_after
                        ):
                            say(paused=True)
                            await trio.sleep_forever()
                        self.fetched[digest] += len(chunk)
                        yield chunk

                async def aclose(stream) -> None:  # noqa: N805
                    await inner.aclose()

            response.stream = Counted()
        return response


async def pull(store: Store, name: str, pause_after: int | None) -> None:
    transport = PausingTransport(pause_after)
    await pull_model(
        store, name, insecure=True, transport=transport, progress=lambda e: say(event=e)
    )
    say(fetched=dict(transport.fetched))


def loop(store: Store, operation: str, n_rounds: int, args: list[str]) -> None:
    for _ in range(n_rounds):
        try:
            if operation == "create":  # ARGS: NAME FROM [SYSTEM]
                system = args[2] if len(args) > 2 else None
                models.create(store, CreateRequest(model=args[0], from_=args[1], system=system))
            elif operation == "delete":  # ARGS: NAME
                models.delete(store, args[0])
            elif operation == "copy":  # ARGS: SOURCE DESTINATION
                models.copy(store, args[0], args[1])
            say(outcome="ok")
        except Exception as error:  # noqa: BLE001 - the parent judges every outcome
            say(outcome=type(error).__name__, message=str(error))


#: The calls a session rewrite may make (to the file system and its locks), where a child
#: process of `kill_in_rewrite` kills itself.
_CALLS = (
    (os, "open"),
    (os, "write"),
    (os, "pwrite"),
    (os, "ftruncate"),
    (os, "fsync"),
    (os, "replace"),
    (os, "rename"),
    (os, "unlink"),
    (os, "close"),
    (fcntl, "flock"),
)


def _kill_at(index: int, after: bool, report: int) -> None:
    """From now on, SIGKILL this process at its `index`-th call of `_CALLS`, before the call or
    just after it returned; the call's name goes to the descriptor `report` first."""
    count = 0
    write = os.write

    def hooked(module: object, name: str, original: object) -> object:
        def call(*args: object, **kwargs: object) -> object:
            nonlocal count
            count += 1
            if count - 1 == index and not after:
                write(report, f"before {name}".encode())
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)  # type: ignore[operator]
            if count - 1 == index and after:
                write(report, f"after {name}".encode())
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return call

    for module, name in _CALLS:
        setattr(module, name, hooked(module, name, getattr(module, name)))


def kill_in_rewrite(store: Store) -> None:
    """Kill a process at each point of a rewrite of its session file: a child process adds a
    blob with its pins (marked `new` in its session), then pins another digest (its session
    file is rewritten) and SIGKILLs itself before or after one of the calls that makes; then
    this process prunes the store and says what is left. Ends with the first child that finished
    its rewrite unkilled."""
    other = "sha256:" + "0" * 64
    for index in range(1000):
        for after in (False, True):
            data = os.urandom(1000)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: no thread runs in this process, so fork is safe
                os.close(read_end)
                pins = store.open_pins()
                store.store_blob_bytes(data, pins=pins)
                _kill_at(index, after, write_end)
                pins.add([other])
                os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as reader:
                where = reader.read().decode()
            _pid, status = os.waitpid(pid, 0)
            killed = os.WIFSIGNALED(status)
            store.prune()
            say(
                point=where,
                killed=killed,
                blob_left=store.has_blob(digest),
                stale=stale_data(store.root),
            )
            if not killed:
                return


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "lock":
        lock = FileLock(Path(argv[1]))
        lock.acquire()
        say(ready=True)
        sleep_forever()
    store = Store(argv[1])
    if command == "hold":
        data = bytes.fromhex(argv[2])
        (store.temp_dir() / "blob-half-written").write_bytes(data[:1])
        pins = store.open_pins()
        digest, new = store.store_blob_bytes(data, pins=pins)
        say(ready=True, digest=digest, new=new, token=store.temp_dir().name)
        sleep_forever()
    elif command == "pull":
        pause_after = int(argv[3]) if len(argv) > 3 else None
        trio.run(pull, store, argv[2], pause_after)
    elif command == "loop":
        loop(store, argv[2], int(argv[3]), argv[4:])
    elif command == "kill-in-rewrite":
        kill_in_rewrite(store)


if __name__ == "__main__":
    main(sys.argv[1:])
