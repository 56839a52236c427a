"""Images end to end: a real `power serve`, the real text models, a real libmtmd projector.

No small vision model ships in a package registry, so `tests/projector_factory.py` writes a tiny
LLaVA-style (`mlp`) projector with random weights whose output width is the text model's
(gemma-3-270m: 640, Qwen2.5-0.5B: 896): 32x32 images in 8x8 patches, 16 image tokens. The model
cannot describe anything, but the plumbing shows: an image reaches the model (its 16 tokens in
`prompt_eval_count`), two different images steer a greedy continuation differently, the same
image twice gives the same one, and a corrupt image is a clear 400. Driven by the real `ollama`
and `openai` client libraries, and by the CLI for `create`.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from projector_factory import n_image_tokens, png_bytes, projector_for

from conftest import GEMMA, GEMMA_CHAT_TEMPLATE, QWEN, populate_store, run_power_server
from power.registry.create import CreateRequest
from power.registry.models import create, resolve
from power.registry.store import MEDIA_TYPE_PROJECTOR, Store

pytestmark = pytest.mark.slow

GEMMA_VISION = "gemma3-vision:test"
QWEN_VISION = "qwen2.5-vision:test"
N_IMAGE_TOKENS = n_image_tokens()
GREEDY = {"temperature": 0, "num_predict": 12, "seed": 1}

RED = png_bytes(32, 32, lambda x, y: (255, 0, 0))
BLUE = png_bytes(32, 32, lambda x, y: (0, 0, 255))
STRIPES = png_bytes(48, 40, lambda x, y: (255 * (x // 6 % 2), 128, 255 * (y // 5 % 2)))


@pytest.fixture(scope="module")
def projectors(tmp_path_factory, gemma_gguf: Path, qwen_gguf: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("projectors")
    return {"gemma": projector_for(gemma_gguf, folder), "qwen": projector_for(qwen_gguf, folder)}


@pytest.fixture(scope="module")
def vision_store(tmp_path_factory, gemma_gguf, qwen_gguf, projectors) -> Path:
    root = tmp_path_factory.mktemp("vision") / "models"
    populate_store(root, gemma_gguf, qwen_gguf, None)
    store = Store(root)
    # `FROM gemma.gguf` + `FROM mmproj.gguf`: both files uploaded, told apart by their headers
    model_digest = store.add_blob_file(gemma_gguf, move=False)
    projector_digest = store.add_blob_file(projectors["gemma"], move=False)
    create(
        store,
        CreateRequest(
            model=GEMMA_VISION,
            files={"gemma.gguf": model_digest, "mmproj-gemma.gguf": projector_digest},
            template=GEMMA_CHAT_TEMPLATE,
            parameters={"stop": ["<end_of_turn>"], "temperature": 0.0, "num_ctx": 1024},
        ),
    )
    # a model of the store plus a projector (`FROM qwen2.5-coder:0.5b` + `FROM mmproj.gguf`)
    create(
        store,
        CreateRequest(
            model=QWEN_VISION,
            from_=QWEN,
            files={"mmproj-qwen.gguf": store.add_blob_file(projectors["qwen"], move=False)},
        ),
    )
    return root


@pytest.fixture(scope="module")
def vision_server(vision_store: Path):
    with run_power_server(vision_store, {"POWER_NUM_PARALLEL": "2"}) as url:
        yield url


@pytest.fixture
def client(vision_server: str) -> ollama.Client:
    return ollama.Client(host=vision_server)


# ---------------------------------------------------------------- store, create, show


def projector_info(vision_server: str, name: str) -> dict:
    """/api/show's `projector_info` (the ollama client's ShowResponse has no such field)."""
    return httpx.post(vision_server + "/api/show", json={"model": name}).json()["projector_info"]


def test_a_vision_model_keeps_its_projector_as_a_layer_and_shows_vision(
    vision_store: Path, vision_server: str, client: ollama.Client
):
    for name in (GEMMA_VISION, QWEN_VISION):
        model = resolve(Store(vision_store), name)
        media_types = [layer.media_type for layer in model.manifest.layers]
        assert media_types.count(MEDIA_TYPE_PROJECTOR) == 1
        assert media_types.index(MEDIA_TYPE_PROJECTOR) == 1  # right after the model layer
        shown = client.show(name)
        assert "vision" in shown.capabilities and "completion" in shown.capabilities
        info = projector_info(vision_server, name)
        assert info["general.architecture"] == "clip" and info["clip.projector_type"] == "mlp"
        froms = [line for line in shown.modelfile.splitlines() if line.startswith("FROM ")]
        assert len(froms) == 2 and froms[1].endswith(model.projector_path.name)
    assert "vision" not in client.show(GEMMA).capabilities


def cli(vision_server: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, POWER_HOST=vision_server.removeprefix("http://"), HOME=str(tmp_path))
    env.pop("OLLAMA_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "power", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_create_from_two_from_lines_and_from_a_folder_with_the_cli(
    vision_server: str, client: ollama.Client, gemma_gguf: Path, projectors, tmp_path: Path
):
    # Ollama's form: FROM the model file, FROM the projector file
    (tmp_path / "Modelfile").write_text(f"FROM {gemma_gguf}\nFROM {projectors['gemma']}\n")
    result = cli(vision_server, tmp_path, "create", "two-froms", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 0, result.stderr
    # a folder holding the model and its mmproj
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(gemma_gguf)
    (folder / "mmproj.gguf").symlink_to(projectors["gemma"])
    (tmp_path / "Folderfile").write_text("FROM ./folder\n")
    result = cli(vision_server, tmp_path, "create", "a-folder", "-f", str(tmp_path / "Folderfile"))
    assert result.returncode == 0, result.stderr
    for name in ("two-froms", "a-folder"):
        shown = client.show(name)
        assert "vision" in shown.capabilities
        assert projector_info(vision_server, name)["clip.projector_type"] == "mlp"
        answer = client.generate(name, "Describe", images=[RED], options=GREEDY)
        assert answer.prompt_eval_count >= N_IMAGE_TOKENS


# ---------------------------------------------------------------- inference, ollama client


def test_an_image_reaches_the_model_and_its_tokens_are_counted(client: ollama.Client):
    client.generate(GEMMA_VISION, "Warm up", options={"num_predict": 1})  # BOS is cached now
    # raw: exactly BOS + the image + the text, against BOS + the text
    text = client.generate(GEMMA_VISION, "Look at this picture", raw=True, options=GREEDY)
    image = client.generate(
        GEMMA_VISION, "[img-0]Look at this picture", raw=True, images=[RED], options=GREEDY
    )
    assert image.prompt_eval_count == text.prompt_eval_count + N_IMAGE_TOKENS
    assert image.response != text.response
    # not raw: the template's user turn holds the image
    templated = client.generate(GEMMA_VISION, "What is this?", images=[RED], options=GREEDY)
    assert templated.prompt_eval_count > N_IMAGE_TOKENS
    assert templated.context and all(t >= 0 for t in templated.context)  # text only


def test_different_images_differ_and_the_same_image_agrees(client: ollama.Client):
    def answer(image: bytes) -> str:
        return client.generate(GEMMA_VISION, "The picture shows", images=[image], options=GREEDY)[
            "response"
        ]

    red, blue, stripes, red_again = answer(RED), answer(BLUE), answer(STRIPES), answer(RED)
    assert red == red_again
    assert len({red, blue, stripes}) == 3


def cached_tokens(server: str) -> float:
    """The server's count of prompt tokens taken from the KV cache (from /metrics)."""
    text = httpx.get(f"{server}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("power_prompt_cached_tokens_total{")
    )


def test_chat_messages_carry_images(client: ollama.Client, vision_server: str):
    def chat(image: bytes) -> ollama.ChatResponse:
        return client.chat(
            QWEN_VISION,
            messages=[{"role": "user", "content": "Describe the image.", "images": [image]}],
            options=GREEDY,
        )

    red = chat(RED)
    assert red.prompt_eval_count > N_IMAGE_TOKENS
    # the next turn sends the conversation again: the image's cells are reused, not evaluated
    cached_before = cached_tokens(vision_server)
    follow = client.chat(
        QWEN_VISION,
        messages=[
            {"role": "user", "content": "Describe the image.", "images": [RED]},
            {"role": "assistant", "content": red.message.content},
            {"role": "user", "content": "And its colour?"},
        ],
        options=GREEDY,
    )
    evaluated = follow.prompt_eval_count - (cached_tokens(vision_server) - cached_before)
    assert 0 < evaluated < N_IMAGE_TOKENS
    assert chat(BLUE).message.content != red.message.content


def test_a_rendered_prompt_shows_ollamas_image_tags(vision_server: str):
    answer = httpx.post(
        vision_server + "/api/generate",
        json={
            "model": GEMMA_VISION,
            "prompt": "Compare them",
            "images": [base64.b64encode(RED).decode(), base64.b64encode(BLUE).decode()],
            "_debug_render_only": True,
        },
    ).json()
    assert "[img-0]\n\n[img-1]\n\nCompare them" in answer["_debug_info"]["rendered_template"]
    assert answer["_debug_info"]["image_count"] == 2 and "debug" not in answer


# ---------------------------------------------------------------- errors


def test_a_corrupt_image_is_a_clear_400(client: ollama.Client):
    for corrupt, words in (
        (b"definitely not an image", "is not a PNG, JPEG"),
        (RED[:40] + b"\x00" * 40, "could not be decoded"),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            client.generate(GEMMA_VISION, "What is this?", images=[corrupt])
        assert caught.value.status_code == 400
        assert "invalid image input" in caught.value.error and words in caught.value.error


def test_a_tag_without_an_image_is_a_400(client: ollama.Client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(GEMMA_VISION, "[img-3] and [img-0]", raw=True, images=[RED])
    assert caught.value.status_code == 400 and "invalid image index: 3" in caught.value.error


def test_a_model_without_a_projector_refuses_images_with_400(client: ollama.Client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(GEMMA, "What is this?", images=[RED])
    assert caught.value.status_code == 400 and "does not support images" in caught.value.error


# ---------------------------------------------------------------- OpenAI client


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def test_openai_image_url_data_urls(vision_server: str):
    client = openai.OpenAI(base_url=vision_server + "/v1", api_key="unused")

    def ask(image: bytes) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=QWEN_VISION,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe the image."},
                        {"type": "image_url", "image_url": {"url": data_url(image)}},
                    ],
                }
            ],
            max_tokens=12,
            temperature=0,
            seed=1,
        )

    red, blue, red_again = ask(RED), ask(BLUE), ask(RED)
    assert red.choices[0].message.content != blue.choices[0].message.content
    assert red.choices[0].message.content == red_again.choices[0].message.content
    assert red.usage.prompt_tokens > N_IMAGE_TOKENS
    with pytest.raises(openai.BadRequestError) as caught:
        ask(b"GIF89a but nothing else")
    assert "invalid image input" in str(caught.value)


# ---------------------------------------------------------------- Anthropic and Responses


def test_anthropic_image_blocks_reach_the_model(vision_server: str):
    import anthropic

    client = anthropic.Anthropic(base_url=vision_server, api_key="unused")

    def ask(image: bytes, media_type: str = "image/png") -> anthropic.types.Message:
        return client.messages.create(
            model=QWEN_VISION,
            max_tokens=12,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": media_type,
                                "data": base64.b64encode(image).decode(),
                            },
                        },
                        {"type": "text", "text": "Describe the image."},
                    ],
                }
            ],
            extra_body={"temperature": 0, "options": {"seed": 1}},
        )

    red, blue, red_again = ask(RED), ask(BLUE), ask(RED)
    text = client.messages.create(
        model=QWEN_VISION,
        max_tokens=12,
        messages=[{"role": "user", "content": "Describe the image."}],
        extra_body={"temperature": 0},
    )
    assert red.usage.input_tokens >= text.usage.input_tokens + N_IMAGE_TOKENS
    assert red.content[0].text == red_again.content[0].text != blue.content[0].text
    counted = client.messages.count_tokens(
        model=QWEN_VISION,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": base64.b64encode(RED).decode(),
                        },
                    },
                    {"type": "text", "text": "Describe the image."},
                ],
            }
        ],
    )
    assert counted.input_tokens == red.usage.input_tokens
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(b"not an image at all")
    assert "invalid image input" in str(caught.value)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=GEMMA,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": base64.b64encode(RED).decode(),
                            },
                        }
                    ],
                }
            ],
        )
    assert "does not support images" in str(caught.value)


def test_responses_input_image_data_urls_reach_the_model(vision_server: str):
    client = openai.OpenAI(base_url=vision_server + "/v1", api_key="unused")

    def ask(image: bytes) -> openai.types.responses.Response:
        return client.responses.create(
            model=QWEN_VISION,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Describe the image."},
                        {"type": "input_image", "image_url": data_url(image)},
                    ],
                }
            ],
            max_output_tokens=12,
            temperature=0,
            extra_body={"options": {"seed": 1}},
        )

    red, blue, red_again = ask(RED), ask(BLUE), ask(RED)
    text = client.responses.create(
        model=QWEN_VISION, input="Describe the image.", max_output_tokens=12, temperature=0
    )
    assert red.usage.input_tokens >= text.usage.input_tokens + N_IMAGE_TOKENS
    assert red.output_text == red_again.output_text != blue.output_text
    with pytest.raises(openai.BadRequestError) as caught:
        ask(b"GIF89a but nothing else")
    assert "invalid image input" in str(caught.value)


# ---------------------------------------------------------------- the engine's API


async def test_the_engine_takes_images_and_splits_one_larger_than_a_batch(
    gemma_gguf: Path, projectors
):
    import contextlib

    from power.engine import EngineError, GenerationParams, load
    from power.engine.projector import ProjectorError
    from power.options import Options

    options = Options(num_ctx=256, num_thread=2, num_batch=8)  # a 16-token image: two decodes
    async with load(gemma_gguf, options, num_parallel=1, projector=projectors["gemma"]) as model:
        assert model.has_vision
        tokens, images = await model.tokenize_with_images(["The picture ", RED, " shows"])
        (image,) = images
        assert image.chunk.n_tokens == image.chunk.n_pos == N_IMAGE_TOKENS
        assert [t for t in tokens if t < 0] == [image.start_id] + [image.continuation_id] * 15
        params = GenerationParams(
            prompt=tuple(tokens), images=images, options=Options(temperature=0, num_predict=4)
        )
        async with contextlib.aclosing(model.generate(params)) as stream:
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].prompt_eval_count == len(tokens) and chunks[-1].eval_count == 4
        encoded = model.projector.encode(image.chunk, 0, 7)
        assert encoded.embeddings.shape == (N_IMAGE_TOKENS, 640)
        assert list(encoded.positions) == list(range(7, 7 + N_IMAGE_TOKENS))
        with pytest.raises(EngineError) as caught:
            await model.tokenize_with_images(["x", b"\xff\xd8\xff not really a JPEG"])
        assert caught.value.status == 400
        projector = model.projector
    with pytest.raises(ProjectorError):  # closed with the model
        projector.tokenize(["x", RED], add_special=True)
