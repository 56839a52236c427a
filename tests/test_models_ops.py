"""Store-level operations on real model files: create, resolve, show, list, copy, delete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import gguf
import numpy as np
import pytest

from power.http import model_json
from power.http.model_json import entry_json, show_json
from power.http.schemas import RequestError, parse_request
from power.messages import Message
from power.registry import models
from power.registry.create import CreateError, CreateRequest
from power.registry.modelfile import parse_modelfile
from power.registry.names import InvalidNameError, ModelName
from power.registry.store import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    ModelNotFoundError,
    Store,
)

TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"


def _link_blob(store: Store, path: Path) -> str:
    """Put a big test model into `store` as a blob without copying it (a hard link)."""
    digest = "sha256:" + {
        "gemma-3-270m-q4_k_m.gguf": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    }.get(path.name, "")
    if digest == "sha256:":
        return store.add_blob_file(path, move=False)
    target = store.blob_path(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    return digest


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def gemma_store(store: Store, gemma_gguf: Path) -> Store:
    """A store holding gemma as `gemma3:270m` with a template, system prompt and parameters."""
    digest = _link_blob(store, gemma_gguf)
    models.create(
        store,
        CreateRequest(
            model="gemma3:270m",
            files={"gemma.gguf": digest},
            template=TEMPLATE,
            system="You are terse.",
            parameters={"temperature": 0.7, "stop": ["<|user|>", "\n\n"], "num_ctx": 8192},
            messages=[
                Message(role="user", content="Hi"),
                Message(role="assistant", content="Hey."),
            ],
            license=["MIT", "Apache-2.0"],
        ),
    )
    return store


def test_create_reports_ollamas_statuses(store: Store, gemma_gguf: Path) -> None:
    digest = _link_blob(store, gemma_gguf)
    statuses: list[str] = []
    models.create(
        store,
        CreateRequest(model="g", files={"g.gguf": digest}, system="S", stream=True),
        lambda update: statuses.append(update["status"]),
    )
    assert statuses[0] == "parsing GGUF"
    assert statuses[1] == f"using existing layer {digest}"
    assert statuses[2].startswith("creating new layer sha256:")
    assert statuses[-2:] == ["writing manifest", "success"]
    # the same create again creates nothing new
    statuses.clear()
    models.create(
        store,
        CreateRequest(model="g", files={"g.gguf": digest}, system="S"),
        lambda u: statuses.append(u["status"]),
    )
    assert not any(s.startswith("creating new layer") for s in statuses)


def test_resolve(gemma_store: Store) -> None:
    model = models.resolve(gemma_store, "GEMMA3:270M")
    assert model.name == ModelName.parse("gemma3:270m")
    assert model.model_path == gemma_store.blob_path(
        "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )
    assert model.template == TEMPLATE
    assert model.system == "You are terse."
    assert model.params == {"num_ctx": 8192, "stop": ["<|user|>", "\n\n"], "temperature": 0.7}
    assert model.messages == [
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hey."),
    ]
    assert model.license == ["MIT", "Apache-2.0"]
    assert model.details == models.ModelDetails(
        parent_model="",
        format="gguf",
        family="gemma3",
        families=["gemma3"],
        parameter_size="268.10M",
        quantization_level="Q4_K_M",
    )
    assert model.capabilities == ["completion"]
    assert model.chat_template is None
    assert model.digest == gemma_store.manifest_digest(model.name)
    assert model.size == gemma_store.read_manifest(model.name).size
    config = json.loads(gemma_store.blob_path(model.manifest.config.digest).read_bytes())
    assert list(config) == [
        "model_format",
        "model_family",
        "model_families",
        "model_type",
        "file_type",
        "architecture",
        "os",
    ]
    assert config["model_type"] == "268.10M" and config["file_type"] == "Q4_K_M"
    with pytest.raises(ModelNotFoundError, match="model 'absent:latest' not found"):
        models.resolve(gemma_store, "absent:latest")
    with pytest.raises(InvalidNameError):
        models.resolve(gemma_store, "../escape")


def test_show(gemma_store: Store) -> None:
    shown = show_json(models.show(gemma_store, "gemma3:270m"))
    assert set(shown) == {
        "license",
        "modelfile",
        "parameters",
        "template",
        "system",
        "details",
        "messages",
        "model_info",
        "capabilities",
        "modified_at",
    }
    assert shown["license"] == "MIT\nApache-2.0"
    assert shown["template"] == TEMPLATE
    assert shown["system"] == "You are terse."
    assert shown["parameters"].splitlines() == [
        "num_ctx                        8192",
        'stop                           "<|user|>"',
        'stop                           "\\n\\n"',
        "temperature                    0.7",
    ]
    assert shown["details"]["parameter_size"] == "268.10M"
    assert shown["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey."},
    ]
    assert shown["model_info"]["general.architecture"] == "gemma3"
    assert shown["model_info"]["tokenizer.ggml.tokens"] == []
    assert shown["capabilities"] == ["completion"]
    assert shown["modified_at"].endswith("Z") or "+" in shown["modified_at"][-6:]
    assert shown["modelfile"].startswith('# Modelfile generated by "power show"\n')
    assert "\n# FROM gemma3:270m\n" in shown["modelfile"]
    json.dumps(shown)  # JSON-ready
    verbose = show_json(models.show(gemma_store, "gemma3:270m", verbose=True))
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 262_144
    assert verbose["tensors"][0].keys() == {"name", "type", "shape"}


def test_show_of_a_model_without_template(store: Store, gemma_gguf: Path) -> None:
    models.create(
        store, CreateRequest(model="bare", files={"m.gguf": _link_blob(store, gemma_gguf)})
    )
    shown = show_json(models.show(store, "bare"))
    assert shown["template"] == "{{ .Prompt }}"
    assert "TEMPLATE" not in shown["modelfile"]
    assert "parameters" not in shown and "system" not in shown and "license" not in shown


def test_show_modelfile_create_round_trip(gemma_store: Store) -> None:
    """`show` → Modelfile → `create` rebuilds the very same manifest, whether the client uploads
    the FROM file (files) or names the local path (power's `from` path extension)."""
    original = gemma_store.read_manifest_bytes(ModelName.parse("gemma3:270m"))
    parsed = parse_modelfile(show_json(models.show(gemma_store, "gemma3:270m"))["modelfile"])
    from_path = Path(parsed.from_)
    assert from_path.parent == gemma_store.blobs_dir
    digest = "sha256:" + hashlib.sha256(from_path.read_bytes()).hexdigest()
    common = {
        "template": parsed.template,
        "system": parsed.system,
        "parameters": parsed.parameters,
        "messages": parsed.messages,
        "license": parsed.license,
    }
    models.create(
        gemma_store, CreateRequest(model="again:files", files={from_path.name: digest}, **common)
    )
    models.create(gemma_store, CreateRequest(model="again:path", from_=str(from_path), **common))
    for name in ("again:files", "again:path"):
        assert gemma_store.read_manifest_bytes(ModelName.parse(name)) == original


def test_create_from_an_existing_model(gemma_store: Store) -> None:
    models.create(
        gemma_store,
        CreateRequest(
            model="me/derived:v2",
            from_="gemma3:270m",
            system="New system.",
            parameters={"top_k": 5},
        ),
    )
    derived = models.resolve(gemma_store, "me/derived:v2")
    assert derived.system == "New system."
    assert derived.template == TEMPLATE  # inherited
    assert derived.params == {
        "num_ctx": 8192,
        "stop": ["<|user|>", "\n\n"],
        "temperature": 0.7,
        "top_k": 5,
    }
    assert derived.details.parent_model == "gemma3:270m"
    manifest = derived.manifest
    media = [layer.media_type for layer in manifest.layers]
    assert media[0] == MEDIA_TYPE_MODEL and manifest.layers[0].from_ == "gemma3:270m"
    assert media.count(MEDIA_TYPE_SYSTEM) == 1 and media[-1] == MEDIA_TYPE_PARAMS
    template_layer = manifest.layers_of(MEDIA_TYPE_TEMPLATE)[0]
    assert template_layer.from_ == "gemma3:270m"
    assert manifest.layers_of(MEDIA_TYPE_SYSTEM)[0].from_ is None
    # the same licenses are not added twice
    models.create(gemma_store, CreateRequest(model="me/lic", from_="gemma3:270m", license="MIT"))
    assert models.resolve(gemma_store, "me/lic").license == ["MIT", "Apache-2.0"]


def test_list_models(gemma_store: Store) -> None:
    models.copy(gemma_store, "gemma3:270m", "user/copy:1")
    for name, moment in (("gemma3:270m", 1_700_000_000), ("user/copy:1", 1_700_000_100)):
        os.utime(gemma_store.find_manifest_path(ModelName.parse(name)), (moment, moment))
    listed = [entry_json(e) for e in models.list_models(gemma_store)]
    expected = model_json.rfc3339(datetime.fromtimestamp(1_700_000_100).astimezone())
    assert listed[0]["modified_at"] == expected
    assert [entry["name"] for entry in listed] == ["user/copy:1", "gemma3:270m"]  # newest first
    entry = listed[1]
    assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert entry["model"] == "gemma3:270m"
    assert entry["digest"] == gemma_store.manifest_digest(ModelName.parse("gemma3:270m"))
    assert len(entry["digest"]) == 64
    assert entry["size"] == gemma_store.read_manifest(ModelName.parse("gemma3:270m")).size
    assert entry["details"]["family"] == "gemma3"
    assert entry["details"]["quantization_level"] == "Q4_K_M"
    assert listed[0]["digest"] == entry["digest"]


def test_copy_and_delete(gemma_store: Store) -> None:
    source = models.resolve(gemma_store, "gemma3:270m")
    models.copy(gemma_store, "gemma3:270m", "copy")
    with pytest.raises(ModelNotFoundError, match="model 'nothing' not found"):
        models.copy(gemma_store, "nothing", "x")
    models.delete(gemma_store, "gemma3:270m")
    with pytest.raises(ModelNotFoundError):
        models.resolve(gemma_store, "gemma3:270m")
    assert all(gemma_store.has_blob(d) for d in source.manifest.digests())  # still used by copy
    models.delete(gemma_store, "COPY:latest")
    assert not any(gemma_store.has_blob(d) for d in source.manifest.digests())
    assert gemma_store.list_models() == []
    with pytest.raises(ModelNotFoundError, match="model 'copy' not found"):
        models.delete(gemma_store, "copy")


def test_delete_with_noprune_keeps_other_orphans(tmp_path: Path, gemma_gguf: Path) -> None:
    store = Store(tmp_path / "m", noprune=True)
    models.create(store, CreateRequest(model="x", files={"x.gguf": _link_blob(store, gemma_gguf)}))
    orphan = store.add_blob_bytes(b"uploaded but unused")
    os.utime(store.blob_path(orphan), (0, 0))
    models.delete(store, "x")
    assert store.has_blob(orphan)
    assert not store.has_blob(
        "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )


def test_recreating_a_model_drops_its_replaced_layers(gemma_store: Store) -> None:
    old_system = models.resolve(gemma_store, "gemma3:270m").manifest.layers_of(MEDIA_TYPE_SYSTEM)[0]
    models.create(
        gemma_store, CreateRequest(model="gemma3:270m", from_="gemma3:270m", system="Other.")
    )
    assert models.resolve(gemma_store, "gemma3:270m").system == "Other."
    assert not gemma_store.has_blob(old_system.digest)


def test_a_failing_create_leaves_nothing(store: Store, gemma_gguf: Path) -> None:
    digest = _link_blob(store, gemma_gguf)
    before = sorted(p.name for p in store.blobs_dir.iterdir())
    with pytest.raises(CreateError, match="temperature"):
        models.create(
            store,
            CreateRequest(
                model="bad",
                files={"m.gguf": digest},
                template="a template only this test uses",
                system="a system prompt only this test uses",
                parameters={"temperature": "hot"},
            ),
        )
    assert store.find_manifest_path(ModelName.parse("bad")) is None
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == before
    assert list(store.temp_dir().iterdir()) == []


@pytest.mark.parametrize(
    ("request_fields", "error", "message"),
    [
        ({}, CreateError, "neither 'from' or 'files' was specified"),
        ({"from_": "unknown:model"}, ModelNotFoundError, "model 'unknown:model' not found"),
        ({"files": {"../m.gguf": "sha256:" + "0" * 64}}, CreateError, "file path must be relative"),
        ({"files": {"/abs.gguf": "sha256:" + "0" * 64}}, CreateError, "file path must be relative"),
        ({"files": {"m.gguf": "sha256:bad"}}, CreateError, "invalid digest format"),
        ({"files": {"m.gguf": "sha256:" + "0" * 64}}, CreateError, "not found"),
        ({"from_": "/does/not/exist"}, CreateError, "no such file or folder"),
        ({"from_": "./does/not/exist"}, CreateError, "absolute path"),
        ({"from_": ".."}, CreateError, "absolute path"),
        (
            {"from_": "gemma3:270m", "quantize": "q8_0"},
            CreateError,
            "only supported for F16, BF16 and F32",
        ),
        (
            {"from_": "gemma3:270m", "quantize": "q9_9"},
            CreateError,
            "unsupported quantization type",
        ),
        ({"from_": "gemma3:270m", "parameters": {"nonsense": 1}}, CreateError, "unknown option"),
    ],
)
def test_create_errors(gemma_store: Store, request_fields: dict, error: type, message: str) -> None:
    before = sorted(str(p) for p in gemma_store.manifests_dir.rglob("*"))
    with pytest.raises(error, match=message):
        models.create(gemma_store, CreateRequest(model="new", **request_fields))
    assert sorted(str(p) for p in gemma_store.manifests_dir.rglob("*")) == before


def test_create_refuses_a_blob_that_is_not_gguf(store: Store) -> None:
    digest = store.add_blob_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(CreateError, match="not in GGUF format"):
        models.create(store, CreateRequest(model="x", files={"m.bin": digest}))
    with pytest.raises(InvalidNameError):
        models.create(store, CreateRequest(model="bad name!", files={"m.bin": digest}))


def test_create_request_from_json() -> None:
    request = parse_request(
        CreateRequest,
        json.dumps(
            {
                "name": "m",
                "from": "base",
                "license": ["a"],
                "messages": [{"role": "USER", "content": "x"}],
            }
        ),
    )
    assert request.model == "m" and request.from_ == "base" and request.license == ["a"]
    assert request.messages == [Message(role="user", content="x")]
    for bad in (
        {},
        {"model": "m", "files": ["x"]},
        {"model": "m", "license": 3},
        {"model": "m", "template": 1},
    ):
        with pytest.raises(RequestError):
            parse_request(CreateRequest, json.dumps(bad))


def _tiny_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("general.file_type", 1)
    writer.add_string(
        "tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    writer.add_tensor("blk.0.weight", np.zeros((16,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_ollama_store_laid_out_by_hand(tmp_path: Path) -> None:
    """A store as Ollama leaves it (its JSON, its config, a params blob with options power does
    not know) is listed, resolved and shown without being rewritten."""
    root = tmp_path / "ollama"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return f"sha256:{digest}", len(data)

    model_digest, model_size = blob(_tiny_gguf(tmp_path / "tiny.gguf").read_bytes())
    config = b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"16","file_type":"F16","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}\n'
    config_digest, config_size = blob(config)
    params_digest, params_size = blob(b'{"num_gqa":8,"stop":["</s>"],"temperature":1}\n')
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": MEDIA_TYPE_MODEL, "digest": model_digest, "size": model_size},
            {"mediaType": MEDIA_TYPE_PARAMS, "digest": params_digest, "size": params_size},
        ],
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    path.parent.mkdir(parents=True)
    data = json.dumps(manifest).encode()
    path.write_bytes(data)

    store = Store(root)
    (listed,) = [entry_json(e) for e in models.list_models(store)]
    assert listed["name"] == "tiny:latest"
    assert listed["digest"] == hashlib.sha256(data).hexdigest()
    assert listed["details"]["parameter_size"] == "16"
    model = models.resolve(store, "tiny")
    assert model.params == {"stop": ["</s>"], "temperature": 1.0}
    assert model.chat_template is not None
    shown = show_json(models.show(store, "tiny"))
    assert shown["template"] == model.chat_template
    assert shown["parameters"].splitlines()[0].startswith("num_gqa") is False
    assert path.read_bytes() == data


@pytest.mark.slow
def test_qwen_capabilities(store: Store, qwen_gguf: Path) -> None:
    model = models.import_gguf(store, "qwen2.5-coder:0.5b", qwen_gguf)
    assert model.details.family == "qwen2"
    assert model.capabilities == ["completion", "tools", "insert"]
    assert show_json(models.show(store, "qwen2.5-coder:0.5b"))["template"] == model.chat_template


@pytest.mark.slow
def test_quantize_an_f32_model(store: Store, minilm_gguf: Path) -> None:
    digest = store.add_blob_file(minilm_gguf, move=False)
    statuses: list[str] = []
    models.create(
        store,
        CreateRequest(model="minilm:q8", files={"minilm.gguf": digest}, quantize="q8_0"),
        lambda update: statuses.append(update["status"]),
    )
    assert "quantizing F32 model to Q8_0" in statuses
    model = models.resolve(store, "minilm:q8")
    assert model.details.quantization_level == "Q8_0"
    assert model.info.quantization_level == "Q8_0"
    assert model.capabilities == ["embedding"]
    assert model.model_path.stat().st_size < minilm_gguf.stat().st_size / 2
    assert list(store.temp_dir().iterdir()) == []


@pytest.mark.slow
def test_create_from_a_safetensors_folder(store: Store, minilm_dir: Path) -> None:
    statuses: list[str] = []
    models.create(
        store,
        CreateRequest(model="minilm", from_=str(minilm_dir)),
        lambda u: statuses.append(u["status"]),
    )
    assert "converting model" in statuses
    model = models.resolve(store, "minilm")
    assert model.details.family == "bert"
    assert model.capabilities == ["embedding"]


@pytest.mark.slow
def test_create_from_uploaded_safetensors_files(store: Store, minilm_dir: Path) -> None:
    """The files of a safetensors folder uploaded as blobs (what `ollama create` sends for
    `FROM ./folder` to a remote server) are converted like the folder itself."""
    files = {}
    for path in sorted(minilm_dir.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".txt"):
            files[path.relative_to(minilm_dir).as_posix()] = store.add_blob_file(path)
    assert "1_Pooling/config.json" in files
    models.create(store, CreateRequest(model="minilm-files", files=files))
    model = models.resolve(store, "minilm-files")
    assert model.details.family == "bert"
    assert model.capabilities == ["embedding"]
    assert list(store.temp_dir().iterdir()) == []


@pytest.mark.slow
def test_converted_minilm_round_trips_through_show_and_create(
    store: Store, minilm_dir: Path
) -> None:
    """safetensors folder → create → show → Modelfile → create gives the identical manifest."""
    models.create(store, CreateRequest(model="minilm-rt", from_=str(minilm_dir), system="Embed."))
    original = store.read_manifest_bytes(ModelName.parse("minilm-rt"))
    parsed = parse_modelfile(show_json(models.show(store, "minilm-rt"))["modelfile"])
    models.create(
        store,
        CreateRequest(
            model="minilm-rt:again",
            from_=parsed.from_,
            system=parsed.system,
            parameters=parsed.parameters,
            template=parsed.template,
            license=parsed.license,
            messages=parsed.messages,
        ),
    )
    assert store.read_manifest_bytes(ModelName.parse("minilm-rt:again")) == original
