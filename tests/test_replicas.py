"""Issue 13: two `power serve` replicas over one store behind HAProxy, configured from
deploy/haproxy.cfg. Through the balancer and directly: concurrent pulls of one model (fetched
once), create and delete racing on one name, chats while a replica is killed; the store never
lists a broken model and both replicas list the same models."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from conftest import GEMMA_CHAT_TEMPLATE, free_port, wait_for_http
from power.registry.models import import_gguf
from power.registry.push import push_model
from power.registry.store import Store
from tests.serving import PowerServer, broken_models, stale_data

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
pytestmark = [pytest.mark.slow, pytest.mark.registry]
REPLICA_ENV = {"POWER_NUM_PARALLEL": "4"}


# ---------------------------------------------------------------- the set-up


@pytest.fixture(scope="module")
def logged_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Debian's docker-registry with its access log (to count the bytes served per blob)."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    root = tmp_path_factory.mktemp("logged-registry")
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    log_path = root / "access.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v2/", process, timeout=30)
        yield f"127.0.0.1:{port}", log_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def served_bytes(log_path: Path, digest: str) -> int:
    """Bytes of blob `digest` the registry sent (GETs, whole or ranged)."""
    pattern = re.compile(rf'"GET [^ ]*/blobs/{digest} HTTP/1.1" 20[06] (\d+)')
    return sum(int(m.group(1)) for m in pattern.finditer(log_path.read_text()))


def haproxy_config(bind: str, replicas: list[str]) -> str:
    """deploy/haproxy.cfg with this test's addresses; its clients count as remote."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    text = text.replace("log /dev/log local0", "log stdout format raw local0")
    text = re.sub(r"(?m)^    bind .*$", f"    bind {bind}", text)
    servers = "".join(
        f"    server replica{i + 1} {address}\n" for i, address in enumerate(replicas)
    )
    text = re.sub(r"(?m)^    server .*\n", "", text).rstrip("\n") + "\n" + servers
    # every client of this test is on loopback: make the balancer treat them as remote
    return text.replace("acl local_client src 127.0.0.0/8 ::1", "acl local_client src 192.0.2.1")


class Balancer:
    def __init__(self, work: Path, replicas: list[PowerServer]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = work / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                f"127.0.0.1:{self.port}",
                [f"127.0.0.1:{replica.port}" for replica in replicas],
            )
        )
        subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], check=True)
        self.log = (work / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=self.log, stderr=self.log
        )
        wait_for_http(self.url + "/", self.process, timeout=30)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


def tags(url: str) -> list[tuple[str, str]]:
    models = httpx.get(url + "/api/tags", timeout=60).json()["models"]
    return sorted((model["name"], model["digest"]) for model in models)


def pull(url: str, name: str) -> httpx.Response:
    return httpx.post(
        url + "/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=600
    )


def generate(url: str, model: str, n_tokens: int = 8) -> httpx.Response:
    body = {
        "model": model,
        "prompt": "The sky is",
        "stream": False,
        "options": {"num_predict": n_tokens, "temperature": 0},
    }
    return httpx.post(url + "/api/generate", json=body, timeout=300)


def in_parallel(*calls) -> list:  # noqa: ANN002
    """Run the zero-argument callables in threads at once; their results (or exceptions)."""
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as error:  # noqa: BLE001
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def generate_streamed(url: str, model: str, started: threading.Event) -> list[dict]:
    """A streamed generation's chunks, until it ends or its connection breaks; `started` is
    set at the first chunk."""
    body = {"model": model, "prompt": "Once upon a time", "options": {"num_predict": 400}}
    chunks: list[dict] = []
    try:
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=300) as response:
            for line in response.iter_lines():
                if line:
                    chunks.append(json.loads(line))
                    started.set()
    except httpx.HTTPError:
        pass
    started.set()
    return chunks


def wait_for_active_sequences(url: str, at_least: int = 1, timeout: float = 120) -> None:
    """Until the server's /metrics shows that many sequences being generated."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = httpx.get(url + "/metrics", timeout=10).text
        match = re.search(r"(?m)^power_active_sequences (\S+)$", metrics)
        if match and float(match.group(1)) >= at_least:
            return
        time.sleep(0.02)
    raise TimeoutError("the generations did not start")


def assert_clean_answer(response: httpx.Response, store: Path, allowed: set[int]) -> None:
    assert response.status_code in allowed, response.text
    assert str(store) not in response.text and ".tmp" not in response.text


# ---------------------------------------------------------------- the test


def test_two_replicas_over_one_store_behind_haproxy(
    logged_registry: tuple[str, Path], tmp_path: Path, gemma_gguf: Path
) -> None:
    registry, registry_log = logged_registry
    gemma = f"{registry}/library/gemma3:270m"
    seed = Store(tmp_path / "seed")
    import_gguf(seed, gemma, gemma_gguf, template=GEMMA_CHAT_TEMPLATE, parameters={"num_ctx": 512})
    trio.run(lambda: push_model(seed, gemma, insecure=True))
    model_digest = next(
        layer.digest
        for layer in seed.list_models()[0].manifest.layers
        if layer.media_type.endswith("model")
    )
    model_size = gemma_gguf.stat().st_size

    store = tmp_path / "models"
    store.mkdir()
    a = PowerServer(store, REPLICA_ENV, name="a").wait_ready()
    b = PowerServer(store, REPLICA_ENV, name="b").wait_ready()
    balancer = Balancer(tmp_path, [a, b])
    try:
        # ---- concurrent pulls of one model: on each replica and through the balancer
        results = in_parallel(
            lambda: pull(a.url, gemma),
            lambda: pull(b.url, gemma),
            lambda: pull(balancer.url, gemma),
        )
        for response in results:
            assert response.status_code == 200 and response.json() == {"status": "success"}
        fetched = served_bytes(registry_log, model_digest)
        assert fetched == model_size, f"the model blob was fetched {fetched / model_size:.2f} times"
        assert tags(a.url) == tags(b.url) == tags(balancer.url)
        assert broken_models(a.url, store) == []

        # ---- affinity: one model's requests all go to one replica; other models spread
        served = Counter(generate(balancer.url, gemma).headers["X-Served-By"] for _ in range(4))
        assert len(served) == 1, served
        home = next(iter(served))
        spread = {
            httpx.post(balancer.url + "/api/show", json={"model": f"m{i}"}).headers["X-Served-By"]
            for i in range(16)
        }
        assert spread == {"replica1", "replica2"}

        # ---- create and delete racing on one name, and create FROM a model racing its delete
        for i_round in range(8):
            create = {"model": "race", "from": gemma, "system": f"round {i_round}", "stream": False}
            first = in_parallel(
                lambda body=create: httpx.post(a.url + "/api/create", json=body, timeout=120),
                lambda: httpx.request("DELETE", b.url + "/api/delete", json={"model": "race"}),
            )
            assert_clean_answer(first[0], store, {200})
            assert_clean_answer(first[1], store, {200, 404})
            derived = {"model": "derived", "from": "race", "system": "d", "stream": False}
            second = in_parallel(
                lambda body=derived: httpx.post(
                    balancer.url + "/api/create", json=body, timeout=120
                ),
                lambda: httpx.request("DELETE", a.url + "/api/delete", json={"model": "race"}),
                lambda: httpx.post(
                    b.url + "/api/copy", json={"source": "race", "destination": "race2"}
                ),
            )
            assert_clean_answer(second[0], store, {200, 404})
            assert_clean_answer(second[1], store, {200, 404})
            assert_clean_answer(second[2], store, {200, 404})
            assert tags(a.url) == tags(b.url)
            assert broken_models(b.url, store) == []

        # ---- a create naming a path of the server's machine, from a remote client
        refused = httpx.post(
            balancer.url + "/api/create", json={"model": "x", "from": str(gemma_gguf)}
        )
        assert refused.status_code == 403

        # ---- chats while the replica serving them is killed: new requests go to the other
        home_server, other = (a, b) if home == "replica1" else (b, a)
        assert generate(balancer.url, gemma).status_code == 200
        in_flight: list = []
        streamed: list[list[dict]] = []
        threads = [
            threading.Thread(
                target=lambda: in_flight.extend(
                    in_parallel(lambda: generate(balancer.url, gemma, n_tokens=128))
                )
            )
            for _ in range(3)
        ]
        stream_started = threading.Event()
        stream_thread = threading.Thread(
            target=lambda: streamed.append(generate_streamed(balancer.url, gemma, stream_started))
        )
        stream_thread.start()
        stream_started.wait()
        for thread in threads:
            thread.start()
        threads.append(stream_thread)
        wait_for_active_sequences(home_server.url, at_least=4)
        home_server.kill()
        after = [generate(balancer.url, gemma) for _ in range(4)]
        for thread in threads:
            thread.join()
        for response in after:
            assert response.status_code == 200, response.text
            assert response.headers["X-Served-By"] != home
            assert response.json()["response"]
        for response in in_flight:
            # not streamed, their answer had not started: HAProxy sent them to the other replica
            assert isinstance(response, httpx.Response), response
            assert response.status_code == 200, response.text
        # a stream already under way is cut where it was: no final chunk
        assert streamed[0] and not streamed[0][-1].get("done"), streamed
        assert tags(balancer.url) == tags(other.url)
        assert broken_models(other.url, store) == []

        # ---- the killed replica comes back, its models with it; nothing stale is left
        restarted = PowerServer(store, REPLICA_ENV, "restarted", home_server.port).wait_ready()
        deadline = time.monotonic() + 30
        while generate(balancer.url, gemma).headers["X-Served-By"] != home:
            assert time.monotonic() < deadline, "the restarted replica got no requests back"
            time.sleep(0.5)
        assert tags(restarted.url) == tags(other.url)
        assert stale_data(store) == []
        restarted.stop()
        print(
            f"\nSUMMARY 3 concurrent pulls fetched the model blob {fetched / model_size:.2f}"
            f" times; killed with generations in flight: the {len(in_flight)} not streamed were"
            f" answered, the streamed one was cut after {len(streamed[0])} chunks;"
            " every later request went to the other replica"
        )
    finally:
        balancer.close()
        for server in (a, b):
            server.stop()
