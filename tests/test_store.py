"""The model store: Ollama's layout and JSON bytes, digests, atomic writes, lookups, pruning."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from power.registry.names import ModelName
from power.registry.partial import (
    PARTIAL_KEEP_SECONDS,
    PartialRecord,
    PartState,
    record_path,
    save_record,
)
from power.registry.store import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_TEMPLATE,
    DigestMismatchError,
    InvalidDigestError,
    Layer,
    Manifest,
    MissingBlobError,
    Store,
    go_json_encode,
    parse_digest,
)

# ---------------------------------------------------------------- fixtures from Ollama

# Blob contents whose digests appear in Ollama's own tests (server/routes_create_test.go):
# the config of a GGUF model of architecture "test" without parameters, the params of
# TestCreateMergeParameters, the messages of TestCreateReplacesMessages, and a template.
OLLAMA_CONFIG = {
    "model_format": "gguf",
    "model_family": "test",
    "model_families": ["test"],
    "model_type": "0",
    "file_type": "unknown",
    "architecture": "amd64",
    "os": "linux",
}
OLLAMA_CONFIG_DIGEST = "99759ad5b91e723db0393d698ffbb448b1b7df5ff6377a108c49254583b1bc8c"
OLLAMA_PARAMS_1 = {"temperature": 1.0, "top_k": 10, "stop": ["USER:", "ASSISTANT:"]}
OLLAMA_PARAMS_1_DIGEST = "1d0ad71299d48c2fb7ae2b98e683643e771f8a5b72be34942af90d97a91c1e37"
OLLAMA_PARAMS_2 = {"temperature": 0.6, "top_k": 10, "top_p": 0.7, "stop": ["USER:", "ASSISTANT:"]}
OLLAMA_PARAMS_2_DIGEST = "e29a7b3c47287a2489c895d21fe413c20f859a85d20e749492f52a838e36e1ba"
OLLAMA_MESSAGES = [
    {"role": "assistant", "content": "What is my purpose?"},
    {"role": "user", "content": "You run tests."},
    {"role": "assistant", "content": "Oh, my god."},
]
OLLAMA_MESSAGES_DIGEST = "298baeaf6928a60cf666d88d64a1ba606feb43a2865687c39e40652e407bffc4"

# A manifest exactly as Ollama's manifest.WriteManifest writes it (compact JSON of the
# Manifest struct: schemaVersion, mediaType, config, layers; layer keys mediaType, digest,
# size, then `from` only when set; a trailing newline from json.Encoder).
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
OLLAMA_MANIFEST_BYTES = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
    b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
    b'"digest":"' + D1.encode() + b'","size":485},"layers":['
    b'{"mediaType":"application/vnd.ollama.image.model","digest":"' + D2.encode() + b'",'
    b'"size":253113024,"from":"gemma3:270m"},'
    b'{"mediaType":"application/vnd.ollama.image.template","digest":"' + D3.encode() + b'",'
    b'"size":27}]}\n'
)


def test_go_json_matches_ollama_blobs() -> None:
    assert hashlib.sha256(go_json_encode(OLLAMA_CONFIG)).hexdigest() == OLLAMA_CONFIG_DIGEST
    for params, digest in (
        (OLLAMA_PARAMS_1, OLLAMA_PARAMS_1_DIGEST),
        (OLLAMA_PARAMS_2, OLLAMA_PARAMS_2_DIGEST),
    ):
        encoded = go_json_encode(params, sort_keys=True)
        assert hashlib.sha256(encoded).hexdigest() == digest
    assert hashlib.sha256(go_json_encode(OLLAMA_MESSAGES)).hexdigest() == OLLAMA_MESSAGES_DIGEST


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (1.0, "1"),
        (0.7, "0.7"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (0.000001, "0.000001"),
        (-2.5, "-2.5"),
        (4096, "4096"),
        (True, "true"),
        (None, "null"),
        ("<|im_start|> & é", '"\\u003c|im_start|\\u003e \\u0026 é"'),
        ("line\nbreak\t\x01", '"line\\nbreak\\t\\u0001"'),
    ],
)
def test_go_json_scalars(value: object, encoded: str) -> None:
    assert go_json_encode(value) == (encoded + "\n").encode()


def test_manifest_json_is_ollamas_format() -> None:
    manifest = Manifest(
        config=Layer(MEDIA_TYPE_CONFIG, D1, 485),
        layers=[
            Layer(MEDIA_TYPE_MODEL, D2, 253113024, from_="gemma3:270m"),
            Layer(MEDIA_TYPE_TEMPLATE, D3, 27),
        ],
    )
    assert manifest.to_json() == OLLAMA_MANIFEST_BYTES
    parsed = Manifest.from_json(OLLAMA_MANIFEST_BYTES)
    assert parsed == manifest
    assert parsed.media_type == MEDIA_TYPE_MANIFEST
    assert parsed.size == 485 + 253113024 + 27
    assert parsed.digests() == [D2, D3, D1]


def test_manifest_from_a_registry_keeps_unknown_layer_names() -> None:
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": D1, "size": 1},
            "layers": [{"mediaType": MEDIA_TYPE_MODEL, "digest": D2, "size": 2, "name": "w"}],
        },
        indent=2,
    )
    manifest = Manifest.from_json(data)
    assert manifest.layers[0].name == "w"
    assert b'"name":"w"' in manifest.to_json()


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b"{}", b'{"config": {"digest": "sha256:abc", "size": 1, "mediaType": "x"}}'],
)
def test_invalid_manifests_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        Manifest.from_json(data)


# ---------------------------------------------------------------- digests and blobs


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:xyz",
        "sha256:../../etc/passwd",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "md5:" + "a" * 64,
        "a" * 64,
        "sha256:" + "a" * 63 + "/",
        "",
    ],
)
def test_bad_digests_are_refused(tmp_path: Path, digest: str) -> None:
    store = Store(tmp_path)
    with pytest.raises(InvalidDigestError):
        store.blob_path(digest)
    with pytest.raises(InvalidDigestError):
        store.has_blob(digest)


def test_blob_paths(tmp_path: Path) -> None:
    store = Store(tmp_path)
    hex_digest = "ab" * 32
    assert store.blob_path("sha256:" + hex_digest) == tmp_path / "blobs" / f"sha256-{hex_digest}"
    assert store.blob_path("sha256:" + hex_digest.upper()).name == f"sha256-{hex_digest}"
    assert store.blob_path("sha256-" + hex_digest).name == f"sha256-{hex_digest}"
    partial = store.partial_path("sha256:" + hex_digest)
    assert partial.parent == store.blobs_dir
    assert partial.name.startswith(f"sha256-{hex_digest}")
    assert parse_digest("sha256:" + hex_digest) == hex_digest


def test_add_blob_bytes_and_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    data = b"hello blobs"
    digest = store.add_blob_bytes(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.blob_path(digest).read_bytes() == data
    assert store.add_blob_bytes(data) == digest  # idempotent

    source = tmp_path / "outside.bin"
    source.write_bytes(b"x" * 100_000)
    file_digest = store.add_blob_file(
        source, "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    )
    assert source.exists()  # copied, not moved: it lies outside the store
    assert store.has_blob(file_digest)
    assert list(store.temp_dir().iterdir()) == []


def test_add_blob_file_refuses_a_wrong_digest(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    source = tmp_path / "file.bin"
    source.write_bytes(b"content")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatchError) as info:
        store.add_blob_file(source, wrong)
    assert info.value.expected == wrong
    assert info.value.actual == "sha256:" + hashlib.sha256(b"content").hexdigest()
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []
    assert list(store.temp_dir().iterdir()) == []
    with pytest.raises(DigestMismatchError):
        store.add_blob_bytes(b"content", wrong)


def test_a_partial_download_is_moved_into_place(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"downloaded bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    partial = store.partial_path(digest)
    partial.write_bytes(data)
    assert store.add_blob_file(partial, digest) == digest
    assert not partial.exists()
    assert store.blob_path(digest).read_bytes() == data
    # a bad partial stays where it is and nothing is added
    bad = store.partial_path("sha256:" + "f" * 64)
    bad.write_bytes(b"corrupt")
    with pytest.raises(DigestMismatchError):
        store.add_blob_file(bad, "sha256:" + "f" * 64)
    assert bad.exists()
    assert not store.has_blob("sha256:" + "f" * 64)


# ---------------------------------------------------------------- manifests


def _manifest_with_blobs(store: Store, *texts: bytes) -> Manifest:
    config = store.add_blob_bytes(b'{"model_format":"gguf"}\n')
    layers = [Layer(MEDIA_TYPE_LICENSE, store.add_blob_bytes(t), len(t)) for t in texts]
    return Manifest(config=Layer(MEDIA_TYPE_CONFIG, config, 23), layers=layers)


def test_write_read_and_digest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    name = ModelName.parse("tiny:1")
    manifest = _manifest_with_blobs(store, b"MIT")
    path = store.write_manifest(name, manifest)
    assert path == tmp_path / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1"
    assert path.read_bytes() == manifest.to_json()
    assert store.read_manifest(name) == manifest
    assert store.manifest_digest(name) == hashlib.sha256(manifest.to_json()).hexdigest()
    assert store.read_manifest(ModelName.parse("other")) is None
    assert store.manifest_digest(ModelName.parse("other")) is None
    assert list(store.temp_dir().iterdir()) == []


def test_write_manifest_refuses_missing_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    manifest = _manifest_with_blobs(store, b"present")
    manifest.layers.append(Layer(MEDIA_TYPE_PARAMS, "sha256:" + "9" * 64, 3))
    name = ModelName.parse("broken")
    with pytest.raises(MissingBlobError):
        store.write_manifest(name, manifest)
    assert store.find_manifest_path(name) is None
    assert list(store.temp_dir().iterdir()) == []


def test_write_manifest_bytes_keeps_the_exact_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    manifest = _manifest_with_blobs(store, b"x")
    pretty = json.dumps(json.loads(manifest.to_json()), indent=3).encode()
    name = ModelName.parse("127.0.0.1:5000/ns/pulled:v1")
    store.write_manifest_bytes(name, pretty)
    assert store.read_manifest_bytes(name) == pretty
    assert store.manifest_digest(name) == hashlib.sha256(pretty).hexdigest()
    with pytest.raises(ValueError):
        store.write_manifest_bytes(name, b"not json")


def test_lookups_are_case_insensitive_and_writes_reuse_the_stored_case(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_manifest(ModelName.parse("MyUser/MyModel:Tag"), _manifest_with_blobs(store, b"a"))
    lower = ModelName.parse("myuser/mymodel:tag")
    assert store.read_manifest(lower) is not None
    assert store.stored_name(lower) == ModelName.parse("MyUser/MyModel:Tag")
    store.write_manifest(ModelName.parse("MYUSER/mymodel:TAG"), _manifest_with_blobs(store, b"b"))
    assert [m.name.display for m in store.list_models()] == ["MyUser/MyModel:Tag"]
    assert store.read_manifest(lower).layers[0].size == 1


def test_delete_manifest_removes_empty_folders(tmp_path: Path) -> None:
    store = Store(tmp_path)
    keep = ModelName.parse("ns/keep")
    gone = ModelName.parse("other/gone:1")
    store.write_manifest(keep, _manifest_with_blobs(store, b"k"))
    store.write_manifest(gone, _manifest_with_blobs(store, b"g"))
    assert store.delete_manifest(ModelName.parse("OTHER/Gone:1"))
    assert not (store.manifests_dir / "registry.ollama.ai" / "other").exists()
    assert (store.manifests_dir / "registry.ollama.ai" / "ns" / "keep" / "latest").exists()
    assert not store.delete_manifest(gone)


def test_copy_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    source = ModelName.parse("source:1")
    store.write_manifest(source, _manifest_with_blobs(store, b"s"))
    assert store.copy_manifest(source, ModelName.parse("u/copy:2"))
    assert store.read_manifest_bytes(ModelName.parse("u/copy:2")) == store.read_manifest_bytes(
        source
    )
    assert not store.copy_manifest(ModelName.parse("absent"), ModelName.parse("x"))


def test_list_an_ollama_layout_written_by_hand(tmp_path: Path) -> None:
    """A store laid out by Ollama (pretty or compact JSON, stray files) is listed as is."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    digests = {}
    for content in (b"config", b"model", b"template"):
        digest = hashlib.sha256(content).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(content)
        digests[content] = f"sha256:{digest}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": digests[b"config"], "size": 6},
        "layers": [
            {"mediaType": MEDIA_TYPE_MODEL, "digest": digests[b"model"], "size": 5},
            {"mediaType": MEDIA_TYPE_TEMPLATE, "digest": digests[b"template"], "size": 8},
        ],
    }
    data = json.dumps(manifest, indent=2).encode()
    path = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "handmade" / "latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    stray = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "handmade" / ".bad"
    stray.write_text("{}")
    (tmp_path / "manifests" / "too-shallow").write_text("{}")

    models = Store(tmp_path).list_models()
    assert len(models) == 1
    (model,) = models
    assert model.name.display == "handmade:latest"
    assert model.digest == hashlib.sha256(data).hexdigest()
    assert model.size == 6 + 5 + 8
    assert model.manifest.layers[1].media_type == MEDIA_TYPE_TEMPLATE
    assert model.modified_at.tzinfo is not None


# ---------------------------------------------------------------- pruning


def _age(path: Path, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


def _resumable_partial(store: Store, data: bytes, completed: int) -> tuple[str, Path, Path]:
    """A partial download of `data` with `completed` bytes on disk and a consistent record."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    partial = store.partial_path(digest)
    partial.write_bytes(data[:completed] + bytes(len(data) - completed))
    record = PartialRecord(digest, len(data), [PartState(0, len(data), completed)])
    save_record(record_path(partial), record)
    return digest, partial, record_path(partial)


def test_prune(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_manifest(ModelName.parse("kept"), _manifest_with_blobs(store, b"used"))
    old_orphan = store.add_blob_bytes(b"old orphan")
    young_orphan = store.add_blob_bytes(b"young orphan")
    _, resumable, resumable_record = _resumable_partial(store, b"resume me", 4)
    _, expired, expired_record = _resumable_partial(store, b"too old to resume", 4)
    broken = store.partial_path("sha256:" + "a" * 64)
    broken.write_bytes(b"half")
    broken.with_name(broken.name + ".json").write_text("{}")
    done_digest = store.add_blob_bytes(b"finished elsewhere")
    _, finished, finished_record = _resumable_partial(store, b"finished elsewhere", 3)
    record_temp = resumable_record.with_name(resumable_record.name + ".tmp")
    record_temp.write_text("{")
    foreign_old = tmp_path / ".tmp" / "blob-leftover"
    foreign_old.write_bytes(b"tmp")
    foreign_young = tmp_path / ".tmp" / "manifest-young"
    foreign_young.write_bytes(b"tmp")
    own_temp = store.temp_dir() / "blob-in-progress"
    own_temp.write_bytes(b"mine")
    for path in store.blobs_dir.iterdir():
        if path != store.blob_path(young_orphan):
            _age(path, 7200)  # the blobs the manifest uses are old too
    for path in (expired, expired_record):
        _age(path, PARTIAL_KEEP_SECONDS + 60)
    _age(foreign_old, 7200)
    garbage = {broken.name, broken.name + ".json", finished.name, finished_record.name}
    garbage |= {expired.name, expired_record.name, record_temp.name, foreign_old.name}

    # noprune keeps unreferenced blobs, not garbage
    assert set(Store(tmp_path, noprune=True).prune()) == garbage
    assert store.has_blob(old_orphan)
    assert store.has_blob(done_digest)

    assert set(store.prune()) == {old_orphan, done_digest}
    assert store.has_blob(young_orphan)
    assert resumable.exists() and resumable_record.exists()
    assert foreign_young.exists() and own_temp.exists()
    manifest = store.read_manifest(ModelName.parse("kept"))
    assert all(store.has_blob(d) for d in manifest.digests())
    assert set(store.prune(grace_seconds=0)) == {young_orphan, foreign_young.name}
    assert all(store.has_blob(d) for d in manifest.digests())
    assert resumable.exists() and own_temp.exists()
    assert not any(path.name.startswith("download-") for path in (tmp_path / ".locks").iterdir())


def test_remove_unreferenced(tmp_path: Path) -> None:
    store = Store(tmp_path)
    shared = _manifest_with_blobs(store, b"shared")
    store.write_manifest(ModelName.parse("a"), shared)
    orphan = store.add_blob_bytes(b"orphan")
    removed = store.remove_unreferenced([*shared.digests(), orphan, "not a digest"])
    assert removed == [orphan]
    assert all(store.has_blob(d) for d in shared.digests())


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Store.from_env({}).root == tmp_path / ".ollama" / "models"
    assert Store.from_env({"OLLAMA_MODELS": "/o"}).root == Path("/o")
    assert Store.from_env({"OLLAMA_MODELS": "/o", "POWER_MODELS": "/p"}).root == Path("/p")
    assert not Store.from_env({}).noprune
    assert Store.from_env({"OLLAMA_NOPRUNE": "1"}).noprune
    assert Store.from_env({"POWER_NOPRUNE": "true"}).noprune
    assert not Store.from_env({"POWER_NOPRUNE": "0"}).noprune
