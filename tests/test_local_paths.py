"""The one local-path rule of /api/create (`power.registry.local_paths`), as a table, and the same
rule seen through a real server: `from: "."` is refused, a remote client may name no path."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import run_power_server
from power.config import is_loopback_address
from power.registry.local_paths import LocalPathError, local_source_path, names_a_path

HOME = os.path.expanduser("~")


@pytest.mark.parametrize(
    ("source", "client", "expected"),
    [
        # model names: never paths, whoever asks
        ("gemma3", "10.1.2.3", None),
        ("library/gemma3:270m", None, None),
        ("registry.example:5000/ns/model:tag", "127.0.0.1", None),
        ("", "127.0.0.1", None),
        # absolute paths: loopback clients and in-process callers
        ("/models/folder", "127.0.0.1", Path("/models/folder")),
        ("/models/folder", "::1", Path("/models/folder")),
        ("/models/folder", "::ffff:127.0.0.1", Path("/models/folder")),
        ("/models/folder", None, Path("/models/folder")),
        ("~/folder", "127.0.0.1", Path(HOME) / "folder"),
        ("~", None, Path(HOME)),
        # relative paths: the server's working folder is no client's business
        (".", "127.0.0.1", 400),
        ("..", "127.0.0.1", 400),
        ("./folder", None, 400),
        ("../folder", "::1", 400),
        (".hidden", "127.0.0.1", 400),
        ("~nobody-such-user/x", "127.0.0.1", 400),
        ("\\folder", "127.0.0.1", 400),
        ("C:\\models\\folder", "127.0.0.1", 400),
        # any path from a remote client, absolute or not
        ("/models/folder", "10.1.2.3", 403),
        ("/models/folder", "::ffff:10.1.2.3", 403),
        ("/models/folder", "", 403),
        (".", "192.0.2.2", 403),
        ("~/folder", "fd00::2", 403),
    ],
)
def test_local_source_path(source: str, client: str | None, expected: Path | int | None):
    if isinstance(expected, int):
        with pytest.raises(LocalPathError) as caught:
            local_source_path(source, client=client)
        assert caught.value.status == expected
        assert names_a_path(source)
    else:
        assert local_source_path(source, client=client) == expected
        assert names_a_path(source) == (expected is not None)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("[::ffff:127.0.0.1]", True),
        ("localhost", True),
        ("::ffff:10.0.0.1", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("", False),
        (None, False),
        ("evil.example.com", False),
    ],
)
def test_loopback_addresses(address: str | None, loopback: bool):
    assert is_loopback_address(address) is loopback


def own_non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback_address(address) else address


@pytest.fixture(scope="module")
def any_address_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("local-paths") / "models"
    store.mkdir()
    with run_power_server(store, bind="0.0.0.0") as url:
        yield url


@pytest.mark.parametrize("source", [".", "..", "./folder", "~nobody-such-user"])
def test_a_relative_from_is_refused_over_http(any_address_server: str, source: str):
    answer = httpx.post(
        any_address_server + "/api/create", json={"model": "m", "from": source}, timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert "absolute path" in answer.json()["error"]


def test_a_remote_client_may_name_no_path(any_address_server: str, tmp_path: Path):
    address = own_non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    port = httpx.URL(any_address_server).port
    remote = f"http://{address}:{port}"
    for source in (str(tmp_path), ".", "~"):
        answer = httpx.post(remote + "/api/create", json={"model": "m", "from": source}, timeout=30)
        assert answer.status_code == 403, (source, answer.text)
    # a model name is fine from anywhere (here: unknown)
    answer = httpx.post(remote + "/api/create", json={"model": "m", "from": "nothing:here"})
    assert answer.status_code == 200  # a stream, ending with the error
    assert "not found" in answer.text
