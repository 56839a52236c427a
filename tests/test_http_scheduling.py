"""Concurrency, disconnects, keep_alive, eviction and the queue bound, against real servers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from conftest import GEMMA, MINILM, populate_store, run_power_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, gemma_gguf, minilm_gguf) -> Path:
    root = tmp_path_factory.mktemp("sched-store") / "models"
    populate_store(root, gemma_gguf, None, minilm_gguf)
    return root


async def wait_until(predicate, *, attempts: int = 600, interval: float = 0.1) -> bool:
    """Poll a server-side effect (bounded at 60 s, for a busy machine); returns whether it
    happened."""
    for _ in range(attempts):
        if await predicate():
            return True
        await trio.sleep(interval)
    return False


def gen_body(i: int, num_predict: int) -> dict:
    return {
        "model": GEMMA,
        "prompt": f"{i}, {i + 1}, {i + 2}, {i + 3},",
        "raw": True,
        "options": {"num_predict": num_predict, "temperature": 0},
    }


async def test_twelve_streams_interleave_and_six_killed_leave_the_rest_intact(small_store):
    with run_power_server(small_store, {"POWER_NUM_PARALLEL": "12"}) as url:
        events: list[tuple[str, int]] = []
        results: dict[int, dict] = {}
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await client.post("/api/generate", json={"model": GEMMA})  # load first

            async def one(i: int) -> None:
                kill = i % 2 == 1
                n_chunks = 0
                async with client.stream("POST", "/api/generate", json=gen_body(i, 60)) as response:
                    async for line in response.aiter_lines():
                        if not line:
                            continue
                        chunk = json.loads(line)
                        n_chunks += 1
                        if n_chunks == 1:
                            events.append(("first", i))
                        if kill and n_chunks == 5:
                            events.append(("killed", i))
                            return  # leaving the block closes the connection mid-stream
                        if chunk["done"]:
                            events.append(("done", i))
                            results[i] = chunk

            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(one, i)

            kinds = [kind for kind, _ in events]
            first_done = kinds.index("done")
            assert kinds[:first_done].count("first") == 12, events
            assert sorted(results) == [0, 2, 4, 6, 8, 10]
            assert all(
                r["eval_count"] == 60 and r["done_reason"] == "length" for r in results.values()
            )

            async def idle() -> bool:
                health = (await client.get("/health")).json()
                models = health["loaded_models"]
                return (
                    bool(models)
                    and models[0]["active_sequences"] == 0
                    and models[0]["references"] == 0
                )

            assert await wait_until(idle)
            # the freed sequences serve new requests
            again = (
                await client.post("/api/generate", json={**gen_body(1, 3), "stream": False})
            ).json()
            assert again["eval_count"] == 3


async def test_keep_alive_expiry_forever_and_zero(small_store):
    with run_power_server(small_store) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def loaded() -> set[str]:
                return {m["name"] for m in (await client.get("/api/ps")).json()["models"]}

            await client.post(
                "/api/generate", json={**gen_body(1, 1), "stream": False, "keep_alive": "1s"}
            )
            assert GEMMA in await loaded()

            async def gone() -> bool:
                return GEMMA not in await loaded()

            assert await wait_until(gone, attempts=100)  # expires once idle for 1 s

            await client.post(
                "/api/generate", json={**gen_body(1, 1), "stream": False, "keep_alive": -1}
            )
            (entry,) = (await client.get("/api/ps")).json()["models"]
            assert entry["expires_at"].startswith("9999")

            await client.post(
                "/api/generate", json={**gen_body(1, 1), "stream": False, "keep_alive": 0}
            )
            assert await wait_until(gone, attempts=50)


async def test_max_loaded_models_evicts_the_idle_one(small_store):
    with run_power_server(small_store, {"POWER_MAX_LOADED_MODELS": "1"}) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await client.post("/api/generate", json={"model": GEMMA})
            names = {m["name"] for m in (await client.get("/api/ps")).json()["models"]}
            assert names == {GEMMA}
            response = await client.post("/api/embed", json={"model": MINILM, "input": "hello"})
            assert response.status_code == 200
            names = {m["name"] for m in (await client.get("/api/ps")).json()["models"]}
            assert names == {MINILM}
            metrics = (await client.get("/metrics")).text
            assert 'power_model_events_total{event="evict"} 1.0' in metrics


async def test_max_queue_answers_503_beyond_the_bound(small_store):
    env = {"POWER_NUM_PARALLEL": "1", "POWER_MAX_QUEUE": "2"}
    with run_power_server(small_store, env) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await client.post("/api/generate", json={"model": GEMMA})
            async with trio.open_nursery() as nursery:

                async def long_request(i: int) -> None:
                    async with client.stream(
                        "POST", "/api/generate", json=gen_body(i, 500)
                    ) as response:
                        async for _ in response.aiter_lines():
                            pass

                for i in range(3):  # one generating, two waiting for the single sequence
                    nursery.start_soon(long_request, i)

                async def queue_full() -> bool:
                    return (await client.get("/health")).json()["queue"]["depth"] >= 2

                assert await wait_until(queue_full)
                refused = await client.post("/api/generate", json=gen_body(9, 1))
                assert refused.status_code == 503
                assert refused.json()["error"] == (
                    "server busy, please try again.  maximum pending requests exceeded"
                )
                nursery.cancel_scope.cancel()
            assert (await client.get("/")).text == "Ollama is running"


async def test_runtime_options_reuse_the_instance_and_load_options_reload(small_store):
    with run_power_server(small_store) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def loads() -> float:
                for line in (await client.get("/metrics")).text.splitlines():
                    if line.startswith('power_model_events_total{event="load"}'):
                        return float(line.split()[-1])
                return 0.0

            body = {**gen_body(1, 2), "stream": False}
            await client.post("/api/generate", json=body)
            assert await loads() == 1
            body["options"] = {**body["options"], "temperature": 0.5, "top_k": 5, "seed": 3}
            await client.post("/api/generate", json=body)
            assert await loads() == 1  # sampling options never reload
            body["options"] = {**body["options"], "num_ctx": 256}
            await client.post("/api/generate", json=body)
            assert await loads() == 2  # a load option does
            (entry,) = (await client.get("/api/ps")).json()["models"]
            assert entry["context_length"] == 256
