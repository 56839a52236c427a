"""Pull, push and update against a real OCI registry (Debian's docker-registry on loopback), plus
protocol unit tests (Bearer challenge, retries) on httpx.MockTransport.

Test models are built here from random blobs (no model-create code involved): a config blob, a
"model" blob, a template and a params blob, written into a temporary Store.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from power.registry import pull as pull_module
from power.registry.names import ModelName
from power.registry.oci import (
    BearerChallenge,
    RegistryClient,
    RegistryError,
    RetryPolicy,
    parse_auth_params,
    sha256_digest,
)
from power.registry.pull import PartialRecord, plan_parts, pull_model, record_path
from power.registry.push import push_model
from power.registry.store import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
    Store,
)
from power.registry.update import update_models

MiB = 1024 * 1024
NO_WAIT = RetryPolicy(attempts=4, first_delay=0.0, max_delay=0.0)


# ---------------------------------------------------------------- helpers


def build_model(
    store: Store,
    name: str,
    *,
    model_size: int,
    template: str = "{{ .Prompt }}",
    empty_license: bool = False,
) -> Manifest:
    """Write a small fake model (random weights, a template, params, a config; optionally an
    empty license blob) into `store`."""
    config = json.dumps(
        {
            "model_format": "gguf",
            "model_family": "test",
            "model_families": ["test"],
            "model_type": "1M",
            "file_type": "Q4_K_M",
        }
    ).encode()
    blobs = [
        (MEDIA_TYPE_MODEL, os.urandom(model_size)),
        (MEDIA_TYPE_TEMPLATE, template.encode()),
        (MEDIA_TYPE_PARAMS, json.dumps({"stop": ["<end>"], "n": os.urandom(4).hex()}).encode()),
    ]
    if empty_license:
        blobs.append((MEDIA_TYPE_LICENSE, b""))
    layers = []
    for media_type, data in blobs:
        digest = store.add_blob_bytes(data)
        layers.append(Layer(media_type=media_type, digest=digest, size=len(data)))
    config_digest = store.add_blob_bytes(config)
    manifest = Manifest(
        config=Layer(media_type=MEDIA_TYPE_CONFIG, digest=config_digest, size=len(config)),
        layers=layers,
    )
    store.write_manifest(ModelName.parse(name), manifest)
    return manifest


def unique_name(registry: str, model: str) -> str:
    return f"{registry}/library/{model}-{uuid.uuid4().hex[:8]}:latest"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def partial_files(store: Store) -> list[str]:
    if not store.blobs_dir.exists():
        return []
    return sorted(p.name for p in store.blobs_dir.iterdir() if "-partial" in p.name)


def registry_blob_data(
    registry: str, tmp_path_factory: pytest.TempPathFactory, digest: str
) -> Path:
    """The data file of a blob inside the docker-registry's storage folder."""
    port = registry.rsplit(":", 1)[1]
    for config in tmp_path_factory.getbasetemp().glob("registry*/config.yml"):
        if f"127.0.0.1:{port}" in config.read_text():
            hex_digest = digest.removeprefix("sha256:")
            return (
                config.parent
                / "data/docker/registry/v2/blobs/sha256"
                / hex_digest[:2]
                / hex_digest
                / "data"
            )
    raise AssertionError("the registry's storage folder was not found")


class CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, before_chunk) -> None:
        self.inner = inner
        self.before_chunk = before_chunk

    async def __aiter__(self):
        async for chunk in self.inner:
            await self.before_chunk(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network, recording each request and counting blob bytes received per digest.

    `fail_after`: raise httpx.ReadError once, after that many bytes of one blob body.
    `pause_after`: once that many bytes of one blob body went through, set `paused` and hold
    the body until `resume` is set."""

    def __init__(self, fail_after: int | None = None, pause_after: int | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str, str | None]] = []
        self.blob_bytes: Counter[str] = Counter()
        self.fail_after = fail_after
        self.pause_after = pause_after
        self.paused = trio.Event()
        self.resume = trio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, request.headers.get("Range")))
        response = await self.inner.handle_async_request(request)
        path = request.url.path
        if request.method == "GET" and "/blobs/sha256:" in path:
            digest = path.rsplit("/", 1)[1]
            response.stream = CountingStream(response.stream, self._counter(digest))
        return response

    def _counter(self, digest: str):
        async def before_chunk(chunk: bytes) -> None:
            if self.fail_after is not None and self.blob_bytes[digest] >= self.fail_after:
                self.fail_after = None  # this chunk is lost with the connection
                raise httpx.ReadError("connection reset (injected)")
            if self.pause_after is not None and self.blob_bytes[digest] >= self.pause_after:
                self.pause_after = None
                self.paused.set()
                await self.resume.wait()
            self.blob_bytes[digest] += len(chunk)

        return before_chunk

    def methods(self) -> Counter[str]:
        return Counter(method for method, _path, _range in self.requests)

    async def aclose(self) -> None:
        pass  # shared by several clients; closed by the test

    async def close_inner(self) -> None:
        await self.inner.aclose()


def check_blob_events(events: list[dict], verb: str, manifest: Manifest) -> None:
    """Each blob's events carry its digest and size; completed only grows and ends at total."""
    for layer in [*manifest.layers, manifest.config]:
        status = f"{verb} {layer.digest.removeprefix('sha256:')[:12]}"
        mine = [event for event in events if event["status"] == status]
        assert mine, f"no {status!r} events"
        assert all(event["digest"] == layer.digest for event in mine)
        assert all(event["total"] == layer.size for event in mine)
        completed = [event["completed"] for event in mine]
        assert completed == sorted(completed)
        assert completed[-1] == layer.size


def statuses(events: list[dict]) -> list[str]:
    """The statuses in order, with consecutive repeats folded and blob statuses as '<verb> *'."""
    folded: list[str] = []
    for event in events:
        status = event["status"]
        if "digest" in event:
            status = status.split(" ")[0] + " *"
        if not folded or folded[-1] != status:
            folded.append(status)
    return folded


# ---------------------------------------------------------------- round trip


@pytest.mark.registry
async def test_push_then_pull_gives_identical_model(registry_server: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    name = unique_name(registry_server, "tiny")
    manifest = build_model(store, name, model_size=40 * 1000 * 1000, empty_license=True)
    model_name = ModelName.parse(name)
    original_manifest = store.read_manifest_bytes(model_name)
    original_blobs = {d: store.blob_path(d).read_bytes() for d in manifest.digests()}

    push_events: list[dict] = []
    await push_model(store, name, insecure=True, progress=push_events.append)
    assert statuses(push_events) == [
        "retrieving manifest",
        "pushing *",
        "pushing manifest",
        "success",
    ]
    check_blob_events(push_events, "pushing", manifest)

    # The registry serves the manifest byte-identical.
    async with RegistryClient(model_name, insecure=True) as client:
        assert await client.get_manifest(model_name.tag) == original_manifest

    assert store.delete_manifest(model_name)
    store.prune(grace_seconds=0)
    assert not any(store.has_blob(d) for d in manifest.digests())

    pull_events: list[dict] = []
    await pull_model(store, name, insecure=True, progress=pull_events.append)
    assert statuses(pull_events) == [
        "pulling manifest",
        "pulling *",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    check_blob_events(pull_events, "pulling", manifest)
    assert store.read_manifest_bytes(model_name) == original_manifest
    for digest, data in original_blobs.items():
        assert store.blob_path(digest).read_bytes() == data
    assert partial_files(store) == []


@pytest.mark.registry
async def test_push_twice_skips_blobs_the_registry_has(
    registry_server: str, tmp_path: Path
) -> None:
    store = Store(tmp_path / "models")
    name = unique_name(registry_server, "twice")
    manifest = build_model(store, name, model_size=2 * MiB)
    first = CountingTransport()
    second = CountingTransport()
    try:
        await push_model(store, name, insecure=True, transport=first, chunk_size=MiB)
        # 4 blobs uploaded; the 2 MiB one in two PATCH chunks.
        assert first.methods()["POST"] == 4
        assert first.methods()["PATCH"] == 5
        events: list[dict] = []
        await push_model(store, name, insecure=True, transport=second, progress=events.append)
    finally:
        await first.close_inner()
        await second.close_inner()
    methods = second.methods()
    assert methods["HEAD"] == 4
    assert methods["POST"] == methods["PATCH"] == 0
    check_blob_events(events, "pushing", manifest)
    assert events[-1] == {"status": "success"}


# ---------------------------------------------------------------- resuming


@pytest.mark.registry
async def test_cancelled_pull_resumes_without_fetching_completed_bytes(
    registry_server: str, tmp_path: Path
) -> None:
    source = Store(tmp_path / "source")
    name = unique_name(registry_server, "resume")
    manifest = build_model(source, name, model_size=40 * 1000 * 1000)
    await push_model(source, name, insecure=True)
    model_layer = manifest.layers[0]
    assert len(plan_parts(model_layer.size)) == 3

    store = Store(tmp_path / "models")
    model_status = f"pulling {model_layer.digest.removeprefix('sha256:')[:12]}"
    with trio.CancelScope() as scope:

        def cancel_half_way(event: dict) -> None:
            if event["status"] == model_status and event["completed"] >= 20 * MiB:
                scope.cancel()

        await pull_model(store, name, insecure=True, progress=cancel_half_way)
    assert scope.cancelled_caught
    assert store.read_manifest(ModelName.parse(name)) is None
    assert not store.has_blob(model_layer.digest)

    partial = store.partial_path(model_layer.digest)
    record = PartialRecord.from_json(record_path(partial).read_text())
    assert record.is_consistent(model_layer.digest, model_layer.size)
    kept = record.completed
    assert 20 * MiB <= kept < model_layer.size
    source_bytes = source.blob_path(model_layer.digest).read_bytes()
    with partial.open("rb") as file:
        for part in record.parts:
            file.seek(part.offset)
            assert (
                file.read(part.completed)
                == source_bytes[part.offset : part.offset + part.completed]
            )

    transport = CountingTransport()
    try:
        await pull_model(store, name, insecure=True, transport=transport)
    finally:
        await transport.close_inner()
    assert transport.blob_bytes[model_layer.digest] == model_layer.size - kept
    ranges = sorted(
        r for _m, path, r in transport.requests if path.endswith(model_layer.digest) and r
    )
    expected = sorted(
        f"bytes={p.offset + p.completed}-{p.offset + p.size - 1}"
        for p in record.parts
        if not p.done
    )
    assert ranges == expected
    assert store.blob_path(model_layer.digest).read_bytes() == source_bytes
    assert partial_files(store) == []


@pytest.mark.registry
async def test_connection_reset_mid_blob_resumes_the_part(
    registry_server: str, tmp_path: Path
) -> None:
    source = Store(tmp_path / "source")
    name = unique_name(registry_server, "reset")
    manifest = build_model(source, name, model_size=3 * MiB)
    await push_model(source, name, insecure=True)

    store = Store(tmp_path / "models")
    transport = CountingTransport(fail_after=MiB)
    try:
        await pull_model(store, name, insecure=True, transport=transport, retry=NO_WAIT)
    finally:
        await transport.close_inner()
    model_layer = manifest.layers[0]
    # Every byte came once: the retry asked only for what was missing.
    assert transport.blob_bytes[model_layer.digest] == model_layer.size
    gets = [
        r for m, path, r in transport.requests if m == "GET" and path.endswith(model_layer.digest)
    ]
    assert len(gets) == 2 and gets[0] == f"bytes=0-{model_layer.size - 1}"
    assert (
        store.blob_path(model_layer.digest).read_bytes()
        == source.blob_path(model_layer.digest).read_bytes()
    )


@pytest.mark.registry
async def test_concurrent_pulls_of_one_blob_share_the_download(
    registry_server: str, tmp_path: Path
) -> None:
    source = Store(tmp_path / "source")
    name_a = unique_name(registry_server, "share-a")
    manifest = build_model(source, name_a, model_size=4 * MiB)
    name_b = unique_name(registry_server, "share-b")
    source.write_manifest(ModelName.parse(name_b), manifest)
    await push_model(source, name_a, insecure=True)
    await push_model(source, name_b, insecure=True)

    store = Store(tmp_path / "models")
    transport = CountingTransport()
    events: dict[str, list[dict]] = {name_a: [], name_b: []}
    try:
        async with trio.open_nursery() as nursery:
            for name in (name_a, name_b):
                nursery.start_soon(
                    lambda name=name: pull_model(
                        store,
                        name,
                        insecure=True,
                        transport=transport,
                        progress=events[name].append,
                    )
                )
    finally:
        await transport.close_inner()
    for layer in [*manifest.layers, manifest.config]:
        assert transport.blob_bytes[layer.digest] == layer.size
    for name in (name_a, name_b):
        check_blob_events(events[name], "pulling", manifest)
        assert events[name][-1] == {"status": "success"}
        assert store.read_manifest_bytes(ModelName.parse(name)) == manifest.to_json()


# ---------------------------------------------------------------- failures


@pytest.mark.registry
async def test_blob_corrupted_on_the_server_is_detected(
    registry_server: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    source = Store(tmp_path / "source")
    name = unique_name(registry_server, "corrupt")
    manifest = build_model(source, name, model_size=MiB)
    await push_model(source, name, insecure=True)
    model_layer = manifest.layers[0]
    data_file = registry_blob_data(registry_server, tmp_path_factory, model_layer.digest)
    data_file.write_bytes(os.urandom(model_layer.size))

    store = Store(tmp_path / "models")
    with pytest.raises(RegistryError) as caught:
        await pull_model(store, name, insecure=True)
    message = str(caught.value)
    assert message.startswith("digest mismatch, file must be downloaded again")
    assert model_layer.digest in message
    assert store.read_manifest(ModelName.parse(name)) is None
    assert not store.has_blob(model_layer.digest)
    # The bad data is gone (other blobs cancelled mid-way may keep their resumable partials).
    bad_partial = store.partial_path(model_layer.digest).name
    assert not [p for p in partial_files(store) if p.startswith(bad_partial)]


@pytest.mark.registry
async def test_unknown_tag_gives_a_clear_error_and_changes_nothing(
    registry_server: str, tmp_path: Path
) -> None:
    store = Store(tmp_path / "models")
    existing = unique_name(registry_server, "known")
    build_model(store, existing, model_size=1000)
    await push_model(store, existing, insecure=True)
    before = snapshot(store.root)
    for name in (existing.replace(":latest", ":nope"), unique_name(registry_server, "never")):
        with pytest.raises(RegistryError) as caught:
            await pull_model(store, name, insecure=True)
        assert str(caught.value) == "pull model manifest: file does not exist"
        assert caught.value.status == 404
    assert snapshot(store.root) == before


@pytest.mark.registry
async def test_push_of_a_missing_model_fails_clearly(registry_server: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        await push_model(Store(tmp_path), f"{registry_server}/library/absent:latest", insecure=True)


async def test_http_name_needs_insecure(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="insecure protocol http"):
        await pull_model(Store(tmp_path), "http://127.0.0.1:9/library/x:latest")


# ---------------------------------------------------------------- update


@pytest.mark.registry
async def test_update_repulls_only_the_changed_model(registry_server: str, tmp_path: Path) -> None:
    source = Store(tmp_path / "source")
    steady = unique_name(registry_server, "steady")
    changing = unique_name(registry_server, "changing")
    build_model(source, steady, model_size=1000)
    old = build_model(source, changing, model_size=1000, template="old {{ .Prompt }}")
    for name in (steady, changing):
        await push_model(source, name, insecure=True)

    store = Store(tmp_path / "models")
    for name in (steady, changing):
        await pull_model(store, name, insecure=True)
    assert await update_models(store, None, insecure=True) == []

    new = build_model(source, changing, model_size=1000, template="new {{ .Prompt }}")
    await push_model(source, changing, insecure=True)

    events: list[dict] = []
    transport = CountingTransport()
    try:
        updated = await update_models(
            store, [steady, changing], insecure=True, progress=events.append, transport=transport
        )
    finally:
        await transport.close_inner()
    assert updated == [ModelName.parse(changing).display]
    assert store.read_manifest_bytes(ModelName.parse(changing)) == new.to_json()
    for digest in new.digests():
        assert store.has_blob(digest)
    # Only the new blobs were fetched; the replaced ones left the store.
    assert set(transport.blob_bytes) == set(new.digests()) - set(old.digests())
    for digest in set(old.digests()) - set(new.digests()):
        assert not store.has_blob(digest)
    assert {"status": f"{ModelName.parse(steady).display} is up to date"} in events
    assert events[-1] == {"status": "success"}


# ---------------------------------------------------------------- protocol units


def test_plan_parts_tiles_the_blob() -> None:
    assert [(p.offset, p.size) for p in plan_parts(1000)] == [(0, 1000)]
    parts = plan_parts(40 * 1000 * 1000)
    assert parts[0].size == pull_module.PART_SIZE_MIN
    assert sum(p.size for p in parts) == 40 * 1000 * 1000
    assert all(a.offset + a.size == b.offset for a, b in zip(parts, parts[1:], strict=False))
    huge = plan_parts(8 * 1024 * MiB)
    assert len(huge) == pull_module.N_PARTS_TARGET


def test_parse_bearer_challenge() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:library/tiny:pull,push"'
    )
    assert BearerChallenge.parse(header) == BearerChallenge(
        realm="https://auth.example/token",
        service="registry.example",
        scope="repository:library/tiny:pull,push",
    )
    assert BearerChallenge.parse('Basic realm="x"') is None
    assert parse_auth_params('a=1, b="x,\\"y"') == {"a": "1", "b": 'x,"y'}


def fake_registry(token_requests: list[httpx.Request], failures: list[int]) -> httpx.MockTransport:
    """A registry that wants a Bearer token from its realm, and fails first with `failures`."""
    manifest = b'{"schemaVersion":2}'

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            token_requests.append(request)
            return httpx.Response(200, json={"token": "secret-token"})
        if failures:
            status = failures.pop(0)
            if status == 0:
                raise httpx.ConnectError("refused (injected)", request=request)
            if status == 1:
                raise httpx.ReadTimeout("timed out (injected)", request=request)
            if status == 2:
                raise httpx.RemoteProtocolError("closed mid-answer (injected)", request=request)
            return httpx.Response(status, headers={"Retry-After": "0"})
        if request.headers.get("Authorization") != "Bearer secret-token":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://auth.test/token",'
                    'service="registry.test",scope="repository:library/tiny:pull"'
                },
                json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            )
        if request.url.path == "/v2/library/tiny/manifests/latest":
            assert "manifest.v2+json" in request.headers["Accept"]
            return httpx.Response(200, content=manifest)
        if request.url.path.startswith("/v2/library/tiny/blobs/"):
            return httpx.Response(200, headers={"Content-Length": "5"})
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]})

    return httpx.MockTransport(handler)


async def test_bearer_token_flow() -> None:
    token_requests: list[httpx.Request] = []
    name = ModelName.parse("registry.test/library/tiny:latest")
    async with RegistryClient(
        name, transport=fake_registry(token_requests, []), retry=NO_WAIT
    ) as client:
        assert client.base_url == "https://registry.test"
        assert await client.get_manifest("latest") == b'{"schemaVersion":2}'
        assert await client.blob_size(sha256_digest(b"hello")) == 5  # token reused
        with pytest.raises(RegistryError, match="file does not exist"):
            await client.get_manifest("other")
    assert len(token_requests) == 1
    params = token_requests[0].url.params
    assert params["service"] == "registry.test"
    assert params["scope"] == "repository:library/tiny:pull"


async def test_transient_failures_are_retried() -> None:
    name = ModelName.parse("registry.test/library/tiny:latest")
    async with RegistryClient(
        name, transport=fake_registry([], [1, 2, 503]), retry=NO_WAIT
    ) as client:
        assert await client.get_manifest("latest") == b'{"schemaVersion":2}'
    async with RegistryClient(
        name, transport=fake_registry([], [429, 502, 504]), retry=NO_WAIT
    ) as client:
        assert await client.get_manifest("latest") == b'{"schemaVersion":2}'
    async with RegistryClient(
        name, transport=fake_registry([], [503] * 5), retry=NO_WAIT
    ) as client:
        with pytest.raises(RegistryError) as caught:
            await client.get_manifest("latest")
    assert caught.value.status == 503


@pytest.mark.parametrize(("failure", "status"), [(0, None), (403, 403), (400, 400), (401, 401)])
async def test_failures_that_cannot_heal_are_not_retried(failure: int, status: int | None) -> None:
    """A refused connection or a 4xx other than 429 fails on the first attempt (the next
    attempt would succeed, so a retry would hide the failure)."""
    name = ModelName.parse("registry.test/library/tiny:latest")
    async with RegistryClient(
        name, transport=fake_registry([], [failure]), retry=NO_WAIT
    ) as client:
        with pytest.raises(RegistryError) as caught:
            await client.get_manifest("latest")
    assert caught.value.status == status


def test_retry_delays_grow_exponentially() -> None:
    policy = RetryPolicy(attempts=6, first_delay=0.5, max_delay=4.0)
    assert [policy.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(0, retry_after="3") == 3.0


@pytest.mark.registry
async def test_a_waiting_pull_takes_over_a_cancelled_download(
    registry_server: str, tmp_path: Path
) -> None:
    source = Store(tmp_path / "source")
    name = unique_name(registry_server, "takeover")
    manifest = build_model(source, name, model_size=4 * MiB)
    await push_model(source, name, insecure=True)
    model_layer = manifest.layers[0]
    model_status = f"pulling {model_layer.digest.removeprefix('sha256:')[:12]}"

    store = Store(tmp_path / "models")
    # Only the model blob is large enough to reach the pause.
    transport = CountingTransport(pause_after=MiB)
    first_scope = trio.CancelScope()
    second_events: list[dict] = []

    def second_progress(event: dict) -> None:
        # The second pull reports the model blob as soon as it joins the first one's download:
        # only then is the first pull cancelled, so the second must take the download over.
        if event["status"] == model_status and not first_scope.cancel_called:
            assert 0 < event["completed"] < model_layer.size
            first_scope.cancel()
        second_events.append(event)

    async def first() -> None:
        with first_scope:
            await pull_model(store, name, insecure=True, transport=transport)

    async def second() -> None:
        await pull_model(store, name, insecure=True, transport=transport, progress=second_progress)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await transport.paused.wait()  # the first pull owns the model blob's download
            nursery.start_soon(second)
    finally:
        await transport.close_inner()
    assert first_scope.cancelled_caught
    assert (
        store.blob_path(model_layer.digest).read_bytes()
        == source.blob_path(model_layer.digest).read_bytes()
    )
    # The second pull went on from the bytes the first had received: nothing was fetched twice.
    assert transport.blob_bytes[model_layer.digest] == model_layer.size
    model_gets = [
        r for m, path, r in transport.requests if m == "GET" and path.endswith(model_layer.digest)
    ]
    assert model_gets[0] == f"bytes=0-{model_layer.size - 1}"
    assert len(model_gets) == 2 and model_gets[1] != model_gets[0]
    check_blob_events(second_events, "pulling", manifest)
    assert store.read_manifest_bytes(ModelName.parse(name)) == manifest.to_json()
