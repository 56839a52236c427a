"""Progress streams of pull/push/create (`power.http.progress`): a slow reader gets merged
progress and always the final status or the error; leaving the stream stops the work."""

from __future__ import annotations

import json

import trio
import trio.testing

from power.http.progress import ProgressBody, ProgressQueue


def lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_queue_merges_progress_of_one_status_and_keeps_every_other_line():
    queue = ProgressQueue()
    queue.put({"status": "pulling manifest"})
    for completed in range(0, 1000, 10):
        queue.put(
            {"status": "pulling a", "digest": "sha256:a", "total": 1000, "completed": completed}
        )
        queue.put(
            {"status": "pulling b", "digest": "sha256:b", "total": 1000, "completed": completed}
        )
    queue.put({"status": "verifying sha256 digest"})
    queue.put({"status": "verifying sha256 digest"})  # not progress: both kept
    queue.close({"status": "success"})
    queue.put({"status": "after the end"})  # ignored

    async def drain() -> list[list[dict]]:
        batches = []
        while batch := await queue.next_batch():
            batches.append(batch)
        return batches

    (batch,) = trio.run(drain)
    assert [e["status"] for e in batch] == [
        "pulling manifest",
        "pulling a",
        "pulling b",
        "verifying sha256 digest",
        "verifying sha256 digest",
        "success",
    ]
    assert batch[1]["completed"] == batch[2]["completed"] == 990


async def test_a_slow_reader_gets_the_final_status():
    """The work reports 30,000 lines while the reader reads one batch; nothing that matters is
    lost and the stream ends with `success`."""

    async def work(report) -> None:
        report({"status": "pulling manifest"})
        for i in range(10_000):
            for digest in ("a", "b", "c"):
                report({"status": f"pulling {digest}", "digest": digest, "completed": i})
            if i % 1000 == 0:
                await trio.lowlevel.checkpoint()
        report({"status": "writing manifest"})
        report({"status": "success"})

    received: list[dict] = []
    async with ProgressBody(work) as body:
        received += lines(await body.__anext__())
        await trio.testing.wait_all_tasks_blocked()  # the work runs ahead of the reader
        async for data in body:
            received += lines(data)
    statuses = [event["status"] for event in received]
    assert statuses[0] == "pulling manifest"
    assert statuses[-2:] == ["writing manifest", "success"]
    assert {"pulling a", "pulling b", "pulling c"} <= set(statuses)
    assert len(received) < 100  # merged, not 30,000 lines
    assert max(e["completed"] for e in received if e["status"] == "pulling c") == 9_999


async def test_an_error_is_the_last_line_and_names_no_server_path():
    async def work(report) -> None:
        report({"status": "creating new layer sha256:abc"})
        raise FileNotFoundError(2, "No such file or directory", "/srv/store/.tmp/manifest-x1")

    async with ProgressBody(work, context="create m") as body:
        received = [event async for data in body for event in lines(data)]
    assert received[0] == {"status": "creating new layer sha256:abc"}
    assert received[-1]["error"].startswith("internal error (id ")
    assert "/srv" not in json.dumps(received)


async def test_leaving_the_stream_stops_the_work():
    """A client that goes away (quart leaves the body) cancels the work and waits for it."""
    stopped = trio.Event()

    async def work(report) -> None:
        try:
            while True:
                report({"status": "pushing", "digest": "d", "completed": 1})
                await trio.lowlevel.checkpoint()  # a producer that never waits on time
        finally:
            stopped.set()

    async with ProgressBody(work) as body:
        await body.__anext__()
    assert stopped.is_set()
