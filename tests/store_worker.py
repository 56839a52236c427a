"""A second process for the store's cross-process tests (tests/test_store_races.py).

    python tests/store_worker.py lock PATH
    python tests/store_worker.py hold STORE HEXDATA
    python tests/store_worker.py pull STORE NAME [PAUSE_AFTER_BYTES]
    python tests/store_worker.py loop STORE OPERATION N ARGS...

It prints one JSON object a line: `{"ready": true}` once it holds what it was asked to hold (then
it sleeps until killed), pull's progress events, `{"paused": true}` when a paused pull reached its
pause, `{"fetched": {digest: bytes}}` at the end of a pull, and for `loop` one
`{"outcome": ...}` per round.
"""

from __future__ import annotations

import json
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


if __name__ == "__main__":
    main(sys.argv[1:])
