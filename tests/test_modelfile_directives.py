"""Modelfile DRAFT, REQUIRES, RENDERER and PARSER: parsed, stored as Ollama stores them (a
`application/vnd.ollama.image.draft` layer, config keys), shown by /api/show and `power show
--modelfile`, and a model that requires a newer Ollama refused on create and on run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from power.http.model_json import show_json
from power.registry import models
from power.registry.create import CreateError, CreateRequest
from power.registry.manifest import MEDIA_TYPE_DRAFT, MEDIA_TYPE_MODEL, Layer, go_json_encode
from power.registry.modelfile import ModelfileError, format_modelfile, parse_modelfile
from power.registry.names import ModelName
from power.registry.store import Store
from power.version import (
    OLLAMA_COMPATIBLE_VERSION,
    compare_versions,
    normalize_requires,
    unmet_requirement,
)

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

DIRECTIVES = """FROM gemma3:270m
draft ./draft.gguf
REQUIRES v0.12.3
RENDERER qwen3-coder
PARSER "qwen3-coder"
"""


def test_parse_and_format_the_directives() -> None:
    parsed = parse_modelfile(DIRECTIVES)
    assert parsed.draft == "./draft.gguf"
    assert parsed.requires == "0.12.3"  # stored without its "v", as Ollama does
    assert parsed.renderer == "qwen3-coder"
    assert parsed.parser == "qwen3-coder"
    text = format_modelfile(parsed)
    assert text == (
        "FROM gemma3:270m\nDRAFT ./draft.gguf\nRENDERER qwen3-coder\nPARSER qwen3-coder\n"
        "REQUIRES 0.12.3\n"
    )
    assert parse_modelfile(text) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("FROM m\nREQUIRES latest\n", "requires must be a valid semver"),
        ("FROM m\nREQUIRES 1.2-rc1\n", "requires must be a valid semver"),
        ("FROM m\nDRAFT\n", "line 2"),
    ],
)
def test_directive_errors(text: str, fragment: str) -> None:
    with pytest.raises(ModelfileError, match=fragment) as info:
        parse_modelfile(text)
    assert info.value.line == 2


def test_versions_compare_as_semver() -> None:
    assert normalize_requires("v1") == "1" and normalize_requires("0.12.0-rc1") == "0.12.0-rc1"
    assert compare_versions("0.9.0", "0.12.0") == -1
    assert compare_versions("1", "1.0.0") == 0
    assert compare_versions("0.12.0-rc1", "0.12.0") == -1
    assert compare_versions("0.12.0-rc.10", "0.12.0-rc.9") == 1  # numeric identifiers
    assert compare_versions("0.12.0-rc10", "0.12.0-rc9") == -1  # compared as text (semver)
    assert unmet_requirement("0.12.0") is None and unmet_requirement("") is None
    message = unmet_requirement("99.1.0")
    assert message is not None and "requires Ollama 99.1.0 or newer" in message
    assert OLLAMA_COMPATIBLE_VERSION in message


# ---------------------------------------------------------------- the store


@pytest.fixture
def store(tmp_path: Path, gemma_gguf: Path) -> Store:
    """A store with gemma as `gemma3:270m` (its blob hard-linked, not copied)."""
    store = Store(tmp_path / "models")
    digest = "sha256:" + GEMMA_SHA256
    store.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(gemma_gguf, store.blob_path(digest))
    except OSError:
        shutil.copyfile(gemma_gguf, store.blob_path(digest))
    models.create(store, CreateRequest(model="gemma3:270m", files={"gemma.gguf": digest}))
    return store


def _config(store: Store, name: str) -> dict:
    manifest = store.read_manifest(ModelName.parse(name))
    return json.loads(store.blob_path(manifest.config.digest).read_bytes())


def test_create_stores_a_draft_model_by_name(store: Store) -> None:
    models.create(
        store,
        CreateRequest(
            model="spec",
            from_="gemma3:270m",
            draft="gemma3:270m",
            requires="v0.12",
            renderer="r1",
            parser="p1",
        ),
    )
    model = models.resolve(store, "spec")
    drafts = model.manifest.layers_of(MEDIA_TYPE_DRAFT)
    assert len(drafts) == 1 and drafts[0].from_ == "gemma3:270m"
    assert drafts[0].digest == model.manifest.layers_of(MEDIA_TYPE_MODEL)[0].digest  # shared
    assert model.draft_path == store.blob_path(drafts[0].digest)
    config = _config(store, "spec")
    assert config["draft"] == {"model_format": "gguf", "architecture": "gemma3"}
    assert (config["renderer"], config["parser"], config["requires"]) == ("r1", "p1", "0.12")
    keys = list(config)
    assert keys.index("requires") < keys.index("draft") < keys.index("architecture")

    shown = show_json(models.show(store, "spec"))
    assert (shown["renderer"], shown["parser"], shown["requires"]) == ("r1", "p1", "0.12")
    parsed = parse_modelfile(shown["modelfile"])
    assert parsed.draft == str(model.draft_path)
    assert (parsed.renderer, parsed.parser, parsed.requires) == ("r1", "p1", "0.12")

    # a model made from it inherits the draft and the config values
    models.create(store, CreateRequest(model="derived", from_="spec", system="hi"))
    derived = models.resolve(store, "derived")
    assert derived.draft_path == model.draft_path
    assert _config(store, "derived")["draft"] == config["draft"]
    assert derived.requires == "0.12" and derived.renderer == "r1"


def test_create_stores_a_draft_from_a_file_or_an_upload(store: Store, gemma_gguf: Path) -> None:
    models.create(store, CreateRequest(model="by-path", from_="gemma3:270m", draft=str(gemma_gguf)))
    digest = models.resolve(store, "by-path").manifest.layers_of(MEDIA_TYPE_DRAFT)[0].digest
    models.create(
        store,
        CreateRequest(model="by-upload", from_="gemma3:270m", draft_files={"d.gguf": digest}),
    )
    for name in ("by-path", "by-upload"):
        layers = models.resolve(store, name).manifest.layers
        assert [layer.media_type for layer in layers] == [MEDIA_TYPE_MODEL, MEDIA_TYPE_DRAFT]
        assert layers[1].from_ is None


def test_create_refuses_bad_drafts_and_requirements(store: Store, tmp_path: Path) -> None:
    with pytest.raises(CreateError, match="requires must be a valid semver"):
        models.create(store, CreateRequest(model="x", from_="gemma3:270m", requires="soon"))
    with pytest.raises(CreateError, match="requires Ollama 99.0.0 or newer"):
        models.create(store, CreateRequest(model="x", from_="gemma3:270m", requires="99.0.0"))
    text = tmp_path / "not.gguf"
    text.write_text("hello")
    with pytest.raises(CreateError, match="GGUF"):
        models.create(store, CreateRequest(model="x", from_="gemma3:270m", draft=str(text)))
    assert store.read_manifest(ModelName.parse("x")) is None


# ---------------------------------------------------------------- HTTP and the CLI


@pytest.fixture
def served(store: Store) -> Iterator[str]:
    from conftest import run_power_server

    with run_power_server(store.root) as url:
        yield url


def _power(url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, POWER_HOST=url.removeprefix("http://"), HOME=str(home), TERM="dumb")
    env.pop("OLLAMA_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "power", *args],
        capture_output=True,
        text=True,
        env=env,
        input="",
        timeout=300,
    )


def test_cli_create_and_show_through_a_server(
    served: str, store: Store, gemma_gguf: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mf"
    folder.mkdir()
    (folder / "Modelfile").write_text(
        "FROM gemma3:270m\nDRAFT gemma3:270m\nREQUIRES 0.11.4\nRENDERER qwen3-coder\n"
        "PARSER qwen3-coder\nPARAMETER num_predict 2\n"
    )
    result = _power(served, tmp_path, "create", "spec-cli", "-f", str(folder / "Modelfile"))
    assert result.returncode == 0, result.stderr
    modelfile = _power(served, tmp_path, "show", "spec-cli", "--modelfile").stdout
    parsed = parse_modelfile(modelfile)
    assert Path(parsed.draft or "").parent == store.blobs_dir
    assert (parsed.renderer, parsed.parser, parsed.requires) == (
        "qwen3-coder",
        "qwen3-coder",
        "0.11.4",
    )

    client = ollama.Client(host=served)
    shown = client.show("spec-cli")
    assert shown.modelfile and modelfile.startswith(shown.modelfile)
    raw = httpx.post(served + "/api/show", json={"model": "spec-cli"}).json()
    assert (raw["renderer"], raw["parser"], raw["requires"]) == (
        "qwen3-coder",
        "qwen3-coder",
        "0.11.4",
    )

    # DRAFT a GGUF file: uploaded as a blob and sent in Ollama's `draft_files`
    (folder / "Modelfile").write_text(f"FROM gemma3:270m\nDRAFT {gemma_gguf}\n")
    result = _power(served, tmp_path, "create", "spec-file", "-f", str(folder / "Modelfile"))
    assert result.returncode == 0, result.stderr
    assert (
        models.resolve(store, "spec-file").draft_path
        == models.resolve(store, "spec-cli").draft_path
    )

    (folder / "Modelfile").write_text("FROM gemma3:270m\nREQUIRES 99.0.0\n")
    result = _power(served, tmp_path, "create", "too-new", "-f", str(folder / "Modelfile"))
    assert result.returncode == 1
    assert "requires Ollama 99.0.0 or newer" in result.stderr
    answer = httpx.post(
        served + "/api/create",
        json={"model": "too-new", "from": "gemma3:270m", "requires": "99.0.0", "stream": False},
    )
    assert answer.status_code == 400
    assert "requires Ollama 99.0.0 or newer" in answer.json()["error"]


def test_a_model_that_requires_a_newer_ollama_is_refused_on_run(served: str, store: Store) -> None:
    """A model pulled or copied in with `requires` above what power follows answers 412."""
    manifest = store.read_manifest(ModelName.parse("gemma3:270m"))
    config = json.loads(store.blob_path(manifest.config.digest).read_bytes())
    config["requires"] = "99.0.0"
    data = go_json_encode(config)
    digest, _new = store.store_blob_bytes(data)
    manifest.config = Layer(manifest.config.media_type, digest, len(data))
    store.write_manifest(ModelName.parse("future:latest"), manifest)

    client = ollama.Client(host=served)
    for call in (
        lambda: client.generate("future", "hi", options={"num_predict": 1}),
        lambda: client.chat("future", [{"role": "user", "content": "hi"}]),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 412
        assert "requires Ollama 99.0.0 or newer" in info.value.error
    shown = httpx.post(served + "/api/show", json={"model": "future"}).json()
    assert shown["requires"] == "99.0.0"  # show still tells what it needs
