"""A real `power serve` driven by the real `openai` Python library."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest

from conftest import GEMMA, MINILM, QWEN

pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


def test_chat_completion(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=10,
        temperature=0,
    )
    choice = completion.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.model == QWEN


def test_chat_completion_stream_with_usage(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls(client: openai.OpenAI, stream: bool):
    kwargs = dict(
        model=QWEN,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        max_tokens=60,
        temperature=0,
    )
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        content = ""
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function.name:
                    entry["name"] = call.function.name
                entry["arguments"] += call.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        (call,) = calls.values()
        assert call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris"}
        assert "tool_call" not in content
    else:
        completion = client.chat.completions.create(**kwargs)
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, str)
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        assert call.id.startswith("call_")


def test_response_format_json_schema(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": "The capital of France, as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "capital",
                "schema": {
                    "type": "object",
                    "properties": {"capital": {"type": "string"}},
                    "required": ["capital"],
                },
            },
        },
        max_tokens=30,
    )
    assert "capital" in json.loads(completion.choices[0].message.content)


def test_options_extension_sets_num_ctx(client: openai.OpenAI, server: str):
    import httpx

    client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=1,
        extra_body={"options": {"num_ctx": 512}},
    )
    running = {m["name"]: m for m in httpx.get(server + "/api/ps").json()["models"]}
    assert running[GEMMA]["context_length"] == 512


def test_completions(client: openai.OpenAI):
    # the prompt goes through the model's template, as with Ollama's /v1/completions
    completion = client.completions.create(
        model=GEMMA, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 6
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=GEMMA, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == completion.choices[0].text  # greedy and solo: reproducible


def test_embeddings(client: openai.OpenAI):
    result = client.embeddings.create(model=MINILM, input=["hello", "world"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384
    short = client.embeddings.create(model=MINILM, input="hello", dimensions=32)
    assert len(short.data[0].embedding) == 32
    b64 = client.embeddings.create(model=MINILM, input="hello", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    floats = client.embeddings.create(model=MINILM, input="hello").data[0].embedding
    assert decoded.shape == (384,) and np.allclose(decoded, floats, atol=1e-6)


def test_models(client: openai.OpenAI):
    ids = {m.id for m in client.models.list()}
    assert {GEMMA, QWEN, MINILM} <= ids
    model = client.models.retrieve(GEMMA)
    assert model.id == GEMMA and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_have_openai_shape(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="missing-model", messages=[{"role": "user", "content": "x"}]
        )
    assert "not found" in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=GEMMA, messages=[])


async def test_async_openai_stream(server: str):
    client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "length"
