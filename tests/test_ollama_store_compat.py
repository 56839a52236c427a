"""A store laid out by hand exactly as Ollama writes one is listed and runnable by power."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest

from conftest import run_power_server

pytestmark = pytest.mark.slow


def write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.replace(":", "-")).write_bytes(data)
    return digest, len(data)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def test_hand_made_ollama_store_is_listed_and_runnable(tmp_path: Path, gemma_gguf: Path):
    root = tmp_path / "ollama-models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    model_digest = file_digest(gemma_gguf)
    os.link(gemma_gguf, blobs / model_digest.replace(":", "-"))
    template_digest, template_size = write_blob(blobs, b"{{ .Prompt }}")
    params_digest, params_size = write_blob(blobs, b'{"stop":["\\n\\n"],"temperature":0}')
    config = {
        "model_format": "gguf",
        "model_family": "gemma3",
        "model_families": ["gemma3"],
        "model_type": "268.10M",
        "file_type": "Q4_K_M",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [model_digest, template_digest, params_digest]},
    }
    config_digest, config_size = write_blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": model_digest,
                "size": gemma_gguf.stat().st_size,
            },
            {
                "mediaType": "application/vnd.ollama.image.template",
                "digest": template_digest,
                "size": template_size,
            },
            {
                "mediaType": "application/vnd.ollama.image.params",
                "digest": params_digest,
                "size": params_size,
            },
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_path = root / "manifests" / "registry.ollama.ai" / "library" / "handmade" / "latest"
    manifest_path.parent.mkdir(parents=True)
    manifest_path.write_bytes(manifest_bytes)

    with run_power_server(root) as url:
        tags = httpx.get(url + "/api/tags").json()["models"]
        (entry,) = tags
        assert entry["name"] == "handmade:latest"
        assert entry["digest"] == hashlib.sha256(manifest_bytes).hexdigest()
        # Ollama counts the config blob too
        assert (
            entry["size"] == gemma_gguf.stat().st_size + template_size + params_size + config_size
        )
        assert entry["details"]["family"] == "gemma3"
        shown = httpx.post(url + "/api/show", json={"model": "handmade"}).json()
        assert shown["template"] == "{{ .Prompt }}"
        assert "temperature" in shown["parameters"]
        answer = httpx.post(
            url + "/api/generate",
            json={
                "model": "HandMade",
                "prompt": "1, 2, 3,",
                "stream": False,
                "options": {"num_predict": 4},
            },
            timeout=60,
        ).json()
        assert answer["done"] and "4" in answer["response"]
    # power changed nothing it did not own
    assert manifest_path.read_bytes() == manifest_bytes
    assert (blobs / model_digest.replace(":", "-")).exists()
