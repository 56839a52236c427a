"""Vision models in the store and in prompts, without running a model: `create`'s projector forms,
the CLI's create request for a folder of GGUF files, and Ollama's `[img-N]` tags."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
from projector_factory import write_projector

from power.messages import Message
from power.prompt.images import image_messages, split_at_tags, tag_images
from power.prompt.render import render_chat, render_generate
from power.registry.create import CreateError, CreateRequest
from power.registry.models import create, resolve, show
from power.registry.store import MEDIA_TYPE_MODEL, MEDIA_TYPE_PROJECTOR, Store


def write_tiny_model(path: Path, n_embd: int = 8) -> Path:
    """A GGUF that reads as a text model (not loadable: no tokenizer)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(n_embd)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((4, n_embd), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "model"
    folder.mkdir()
    return {
        "model": write_tiny_model(folder / "model.gguf"),
        "projector": write_projector(folder / "mmproj.gguf", 8, n_embd=16, n_ff=32, n_layer=1),
        "other": write_projector(tmp_path / "other-mmproj.gguf", 8, n_embd=16, n_ff=32, seed=5),
    }


def media_types(store: Store, name: str) -> list[str]:
    return [layer.media_type for layer in resolve(store, name).manifest.layers]


def test_two_uploaded_files_are_a_model_and_its_projector(tmp_path: Path, files):
    store = Store(tmp_path / "store")
    request = CreateRequest(
        model="vision",
        files={
            "model.gguf": store.add_blob_file(files["model"], move=False),
            "mmproj.gguf": store.add_blob_file(files["projector"], move=False),
        },
    )
    create(store, request)
    assert media_types(store, "vision") == [MEDIA_TYPE_MODEL, MEDIA_TYPE_PROJECTOR]
    shown = show(store, "vision")
    assert "vision" in shown.model.capabilities
    assert shown.projector_info.model_info["clip.projector_type"] == "mlp"
    assert shown.modelfile.count("\nFROM ") == 2


def test_a_local_folder_of_gguf_files_and_a_name_plus_a_projector(tmp_path: Path, files):
    store = Store(tmp_path / "store")
    create(store, CreateRequest(model="folder", from_=str(files["model"].parent)))
    assert media_types(store, "folder") == [MEDIA_TYPE_MODEL, MEDIA_TYPE_PROJECTOR]
    create(store, CreateRequest(model="text", from_=str(files["model"])))
    assert "vision" not in resolve(store, "text").capabilities
    # `FROM text` + `FROM other-mmproj.gguf`: the projector is added after the model layer
    digest = store.add_blob_file(files["other"], move=False)
    create(
        store,
        CreateRequest(model="text-vision", from_="text", files={"p.gguf": digest}, system="Hi"),
    )
    model = resolve(store, "text-vision")
    assert [layer.media_type for layer in model.manifest.layers][:2] == [
        MEDIA_TYPE_MODEL,
        MEDIA_TYPE_PROJECTOR,
    ]
    assert model.projector_path == store.blob_path(digest) and "vision" in model.capabilities
    # a projector added to a vision model replaces its projector
    create(store, CreateRequest(model="swapped", from_="folder", files={"p.gguf": digest}))
    swapped = resolve(store, "swapped")
    assert swapped.projector_paths == [store.blob_path(digest)]
    # beside a model name, only a projector may come from files
    model_digest = store.add_blob_file(files["model"], move=False)
    with pytest.raises(CreateError, match="must be a vision projector"):
        create(store, CreateRequest(model="x", from_="text", files={"m.gguf": model_digest}))


def test_the_cli_uploads_a_folder_of_gguf_files(tmp_path: Path, files):
    from power.cli.main import build_create_request
    from power.cli.progress import Progress
    from power.client import Client
    from power.registry.modelfile import parse_modelfile

    uploaded: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        digest = request.url.path.removeprefix("/api/blobs/")
        if request.method == "HEAD":
            return httpx.Response(200 if digest in uploaded else 404)
        uploaded[digest] = request.read()
        return httpx.Response(201)

    def digest(path: Path) -> str:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()

    with Client("127.0.0.1:9", transport=httpx.MockTransport(handler)) as client:
        progress = Progress(io.StringIO(), tty=False)
        folder = build_create_request(client, progress, parse_modelfile("FROM ./model\n"), tmp_path)
        two = build_create_request(
            client, progress, parse_modelfile("FROM llava:7b\nFROM other-mmproj.gguf\n"), tmp_path
        )
        progress.stop()
    assert folder == {
        "files": {"mmproj.gguf": digest(files["projector"]), "model.gguf": digest(files["model"])}
    }
    assert two == {"from": "llava:7b", "files": {"other-mmproj.gguf": digest(files["other"])}}
    assert set(uploaded) == {digest(path) for path in files.values()}


# ---------------------------------------------------------------- [img-N] tags


def test_images_are_tagged_as_ollama_tags_them():
    messages = [
        Message(role="user", content="first", images=[b"a", b"b"]),
        Message(role="assistant", content="ok"),
        Message(role="user", content="look at [img] closely", images=[b"c"]),
    ]
    tagged = tag_images(messages)
    assert [m.content for m in tagged] == [
        "[img-0][img-1]first",
        "ok",
        "look at [img-2] closely",
    ]
    assert messages[0].content == "first"  # the request's messages are left alone


def test_the_rendered_prompt_is_cut_at_its_tags():
    assert split_at_tags("[img-1] and [img-0]!", [b"A", b"B"]) == [b"B", " and ", b"A", "!"]
    assert split_at_tags("no image", [b"A"]) == ["no image"]
    assert split_at_tags("[img-0]", [b"A"]) == [b"A"]
    with pytest.raises(ValueError, match="invalid image index: 2"):
        split_at_tags("[img-2]", [b"A"])


def test_generate_puts_each_image_in_a_user_message_before_the_prompt():
    prompt = render_generate("Compare them", template="{{ .Prompt }}", messages=image_messages(2))
    assert prompt == "[img-0]\n\n[img-1]\n\nCompare them"
    jinja = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    chat = render_chat(
        tag_images([Message(role="user", content="What?", images=[b"x"])]),
        template=None,
        jinja_template=jinja,
    )
    assert chat == "<user>[img-0]What?"
