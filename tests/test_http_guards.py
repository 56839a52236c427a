"""Guards of a real `power serve` that the security tests do not cover: the Host guard on an
IPv4-mapped loopback bind, the API key compared as a whole (constant time), blob quotas."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import run_power_server
from power.http.app import api_key_matches, host_allowed

KEY = "s3cret-kéy"  # a non-ASCII key: the header carries its UTF-8 bytes


@pytest.fixture(scope="module")
def mapped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bound to `[::ffff:127.0.0.1]`: loopback, seen through an IPv6 socket, with an API key."""
    store = tmp_path_factory.mktemp("mapped") / "models"
    store.mkdir()
    with run_power_server(store, {"POWER_API_KEY": KEY}, bind="[::ffff:127.0.0.1]") as url:
        yield url


def auth(key: str = KEY) -> dict[str, bytes]:
    return {"Authorization": f"Bearer {key}".encode()}


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:11434", "[::ffff:8.8.8.8]"])
def test_an_ipv4_mapped_loopback_bind_keeps_the_host_guard(mapped_server: str, host: str):
    answer = httpx.get(mapped_server + "/api/version", headers={"Host": host, **auth()})
    assert answer.status_code == 403, answer.text


def test_an_ipv4_mapped_loopback_client_is_local(mapped_server: str, tmp_path: Path):
    """A client of the mapped bind is loopback: it may create from an absolute path (here one
    that does not exist: the stream ends with the error, not a 403)."""
    answer = httpx.post(
        mapped_server + "/api/create",
        json={"model": "m", "from": str(tmp_path / "nothing"), "stream": False},
        headers=auth(),
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert "no such file or folder" in answer.json()["error"]
    local = httpx.get(mapped_server + "/api/version", headers={"Host": "localhost", **auth()})
    assert local.status_code == 200


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (f"Bearer {KEY}", True),
        (f"Bearer  {KEY}", False),
        (f"Bearer {KEY}x", False),
        (f"Bearer {KEY[:-1]}", False),
        (f"bearer {KEY}", False),
        (KEY, False),
        ("", False),
        ("Bearer", False),
    ],
)
def test_the_api_key_must_match_exactly(mapped_server: str, header: str, accepted: bool):
    headers = {"Authorization": header.encode()} if header else {}
    answer = httpx.get(mapped_server + "/api/tags", headers=headers)
    assert answer.status_code == (200 if accepted else 401), answer.text
    # quart hands the header over decoded as latin-1
    assert api_key_matches(KEY, {"Authorization": header.encode().decode("latin-1")}) is accepted


def test_host_allowed_understands_mapped_addresses():
    assert host_allowed("[::ffff:127.0.0.1]:11434")
    assert host_allowed("[::ffff:192.168.1.2]")
    assert not host_allowed("[::ffff:8.8.8.8]")
    assert not host_allowed("evil.example.com")


# ---------------------------------------------------------------- blob quota


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("quota") / "models"
    store.mkdir()
    with run_power_server(store, {"POWER_MAX_BLOB_BYTES": "1M"}) as url:
        yield url, store


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("declared", [True, False])
def test_a_blob_over_the_quota_is_refused_and_leaves_nothing(
    quota_server: tuple[str, Path], declared: bool
):
    url, store = quota_server
    data = b"x" * (2 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    content = data if declared else chunks(data)  # a generator goes chunked
    answer = httpx.post(f"{url}/api/blobs/{digest}", content=content, timeout=60)
    assert answer.status_code == 413, answer.text
    assert httpx.head(f"{url}/api/blobs/{digest}").status_code == 404
    assert [p for p in store.rglob("*") if p.is_file() and "upload" in p.name] == []


def test_a_blob_within_the_quota_is_stored(quota_server: tuple[str, Path]):
    url, _ = quota_server
    data = b"y" * (1 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    answer = httpx.post(f"{url}/api/blobs/{digest}", content=chunks(data), timeout=60)
    assert answer.status_code == 201, answer.text
    again = httpx.post(f"{url}/api/blobs/{digest}", content=chunks(data), timeout=60)
    assert again.status_code == 200  # already there: answered without reading it
    assert httpx.get(f"{url}/api/blobs/{digest}").content == data
