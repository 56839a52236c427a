"""A pull from a registry that cannot be reached fails at once with a message that says why
(a host name that does not resolve, a port that refuses), over the real network stack, in
`pull_model` and through `power serve` with the `ollama` client. Transient failures are still
retried (tests/test_pull_push.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from conftest import free_port
from power.registry.oci import RegistryError, RetryPolicy
from power.registry.pull import pull_model
from power.registry.store import Store

#: The default policy's attempts, with waits long enough that a retry could not go unnoticed.
PATIENT = RetryPolicy(attempts=6, first_delay=0.5, max_delay=16.0)


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network transport, counting the requests sent through it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.n_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.n_requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on."""
    yield free_port()


async def _pull_error(store: Store, name: str) -> tuple[RegistryError, int]:
    transport = CountingTransport()
    with pytest.raises(RegistryError) as caught:
        await pull_model(store, name, insecure=True, transport=transport, retry=PATIENT)
    return caught.value, transport.n_requests


async def test_an_unresolvable_host_fails_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    error, n_requests = await _pull_error(store, "registry.invalid/library/tiny:latest")
    assert n_requests == 1
    assert str(error).startswith(
        "pull model manifest: cannot resolve the registry host 'registry.invalid'"
    )
    assert error.status is None
    assert store.list_models() == []


async def test_a_closed_port_fails_at_once(tmp_path: Path, closed_port: int) -> None:
    store = Store(tmp_path / "models")
    error, n_requests = await _pull_error(store, f"127.0.0.1:{closed_port}/library/tiny:latest")
    assert n_requests == 1
    assert str(error) == (
        f"pull model manifest: connection refused by 127.0.0.1:{closed_port}: "
        "is the registry running?"
    )


def test_the_ollama_client_sees_the_reason(power_server: str, closed_port: int) -> None:
    client = ollama.Client(host=power_server)
    for name, words in (
        ("registry.invalid/library/tiny:latest", "cannot resolve the registry host"),
        (f"127.0.0.1:{closed_port}/library/tiny:latest", "connection refused by 127.0.0.1"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            client.pull(name, insecure=True)
        assert words in caught.value.error
        with pytest.raises(ollama.ResponseError) as caught:  # streamed: the error line
            for _progress in client.pull(name, insecure=True, stream=True):
                pass
        assert words in caught.value.error
