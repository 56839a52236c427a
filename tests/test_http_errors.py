"""What errors tell clients (`power.http.errors`): statuses that say whose fault it is, and never
a path of the server; option errors are 400s naming the option wherever they are raised."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import gguf
import httpx
import pytest

from conftest import run_power_server
from power.engine.types import EngineError
from power.http.errors import describe, public_message
from power.http.running import use_model
from power.http.schemas import RequestError
from power.options import OptionError, Options
from power.registry.create import CreateError
from power.registry.models import import_gguf
from power.registry.oci import RegistryError
from power.registry.store import ModelNotFoundError, Store, StoreError


@pytest.mark.parametrize(
    ("text", "public"),
    [
        (
            "llama.cpp could not load model /srv/models/blobs/sha256-ab12: bad magic",
            "llama.cpp could not load model …/sha256-ab12: bad magic",
        ),
        (
            "[Errno 2] No such file or directory: '/s/.tmp/manifest-x1' -> '/s/manifests/a/b'",
            "[Errno 2] No such file or directory: '…/manifest-x1' -> '…/b'",
        ),
        ("(path=/etc/passwd)", "(path=…/passwd)"),
        ("connect to http://registry:5000/v2/ns/m failed", None),
        ("model 'library/gemma3:270m' not found", None),
        ("1/2 of the layers", None),
        ("", None),
    ],
)
def test_public_message_cuts_server_paths(text: str, public: str | None):
    assert public_message(text) == (text if public is None else public)


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (RequestError(409, "busy"), 409, "busy"),
        (OptionError("option 'num_ctx' must be at least 1"), 400, "option 'num_ctx'"),
        (ModelNotFoundError("m"), 404, "model 'm' not found"),
        (CreateError("no model layer in /tmp/x/y"), 400, "no model layer in …/y"),
        (EngineError("failed to load model 'm': /a/b/c"), 500, "failed to load model 'm': …/c"),
        (EngineError("too busy", status=503), 503, "too busy"),
        (RegistryError("unauthorized", status=401), 401, "unauthorized"),
        (RegistryError("connection refused"), 500, "connection refused"),
        (StoreError("blob sha256:ab is missing from the store"), 500, "blob sha256:ab"),
        (OSError(errno.ENOSPC, "No space left on device"), 507, "not enough disk space"),
        (FileNotFoundError(2, "No such file", "/srv/x"), 500, "internal error (id "),
        (KeyError("x"), 500, "internal error (id "),
        (ValueError("from a library, not power"), 500, "internal error (id "),
    ],
)
def test_describe(error: BaseException, status: int, message: str):
    got_status, got_message = describe(error)
    assert got_status == status
    assert got_message.startswith(message) or message in got_message
    assert "/srv" not in got_message and "/tmp" not in got_message


@attrs.define
class RefusingManager:
    """A model manager whose load refuses an option, as the engine's validation does."""

    error: Exception

    @contextlib.asynccontextmanager
    async def use(self, *args, **kwargs):
        raise self.error
        yield  # pragma: no cover


@attrs.define
class FakeState:
    manager: RefusingManager
    settings: object = attrs.field(
        factory=lambda: type("S", (), {"num_parallel": 4, "kv_cache_type": "f16"})
    )


async def test_an_option_refused_at_load_is_a_400_naming_it(monkeypatch: pytest.MonkeyPatch):
    import power.http.running as running

    monkeypatch.setattr(running, "load_spec", lambda *args: object())
    monkeypatch.setattr(running, "instance_info", lambda ref: {})
    ref = type("Ref", (), {"name": "m"})()
    state = FakeState(RefusingManager(OptionError("option 'num_batch' must be at least 4")))
    with pytest.raises(RequestError) as caught:
        async with use_model(state, ref, Options(), None):  # type: ignore[arg-type]
            pass
    assert caught.value.status == 400
    assert "num_batch" in caught.value.message

    def refusing_spec(*args):
        raise OptionError("option 'num_ctx' must be at least 1")

    monkeypatch.setattr(running, "load_spec", refusing_spec)
    with pytest.raises(RequestError) as caught:
        async with use_model(state, ref, Options(), None):  # type: ignore[arg-type]
            pass
    assert (caught.value.status, "num_ctx" in caught.value.message) == (400, True)


# ---------------------------------------------------------------- a real server


def weightless_gguf(path: Path) -> Path:
    """A GGUF header that names a llama model but has no tensors: its metadata reads, its load
    fails in llama.cpp (with the file's path in the message)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def broken_store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("errors")
    store_root = root / "models"
    store = Store(store_root)
    import_gguf(store, "weightless", weightless_gguf(root / "weightless.gguf"))
    # a file where the folder of a model named `blocked` would go: writing it fails (OSError)
    blocked = store_root / "manifests" / "registry.ollama.ai" / "library" / "blocked"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("not a folder")
    with run_power_server(store_root) as url:
        yield url, store_root


def assert_no_server_path(answer: httpx.Response, store_root: Path) -> None:
    text = answer.text
    assert str(store_root) not in text and "/tmp/" not in text and "/blobs/" not in text, text


def test_a_failed_load_names_no_server_path(broken_store_server: tuple[str, Path]):
    url, store_root = broken_store_server
    for path, body in [
        ("/api/generate", {"model": "weightless", "prompt": "hi", "stream": False}),
        ("/api/chat", {"model": "weightless", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "weightless", "prompt": "hi"}),
    ]:
        answer = httpx.post(url + path, json=body, timeout=60)
        assert answer.status_code >= 500, answer.text
        assert_no_server_path(answer, store_root)
        assert "weightless" in answer.text  # still says what failed


def test_an_internal_error_is_a_generic_500_with_an_id(broken_store_server: tuple[str, Path]):
    url, store_root = broken_store_server
    answer = httpx.post(
        url + "/api/copy", json={"source": "weightless", "destination": "blocked"}, timeout=30
    )
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"].startswith("internal error (id ")
    assert_no_server_path(answer, store_root)
    error_id = answer.json()["error"].removeprefix("internal error (id ").rstrip(")")
    log = next(store_root.parent.glob("server-*.log")).read_text()
    assert error_id in log  # the detail is in the server's log, under that id
    # streamed: the error line of a create names no path either
    create = httpx.post(
        url + "/api/create", json={"model": "blocked", "from": "weightless"}, timeout=30
    )
    last = json.loads(create.text.splitlines()[-1])
    assert "error" in last
    assert_no_server_path(create, store_root)
