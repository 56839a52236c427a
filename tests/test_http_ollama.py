"""A real `power serve` driven by the real `ollama` Python library (sync and async clients)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import ollama
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
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def client(server: str) -> ollama.Client:
    return ollama.Client(host=server)


def test_generate_streaming_and_not(client: ollama.Client):
    response = client.generate(model=GEMMA, prompt="1, 2, 3,", raw=True, options={"num_predict": 6})
    assert response.done and response.done_reason == "length"
    assert response.eval_count == 6 and response.prompt_eval_count > 0
    assert response.total_duration > 0 and response.eval_duration > 0
    assert response.context is None  # raw: no context
    assert "4" in response.response
    parts = list(
        client.generate(model=GEMMA, prompt="Hello", options={"num_predict": 4}, stream=True)
    )
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    assert parts[-1].context  # templated generate returns context


def test_generate_context_continues_a_conversation(client: ollama.Client):
    first = client.generate(
        model=GEMMA, prompt="Count: 1, 2, 3,", raw=False, options={"num_predict": 4}
    )
    again = client.generate(
        model=GEMMA, prompt="more", context=first.context, options={"num_predict": 2}
    )
    assert again.done
    assert again.prompt_eval_count < len(first.context) + 10


def test_chat_streaming_and_not(client: ollama.Client):
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat(model=GEMMA, messages=messages, options={"num_predict": 8})
    assert answer.message.role == "assistant" and answer.done
    streamed = list(
        client.chat(model=GEMMA, messages=messages, options={"num_predict": 8}, stream=True)
    )
    assert streamed[-1].done and streamed[-1].done_reason in ("stop", "length")
    assert "".join(c.message.content for c in streamed) == answer.message.content  # greedy, solo


def test_chat_with_qwen_answers_paris(client: ollama.Client):
    answer = client.chat(
        model=QWEN,
        messages=[
            {"role": "user", "content": "What is the capital of France? Answer in one word."}
        ],
        options={"num_predict": 10},
    )
    assert "Paris" in answer.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_is_structured_and_never_content(client: ollama.Client, stream: bool):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        chunks = list(
            client.chat(
                model=QWEN,
                messages=messages,
                tools=[WEATHER_TOOL],
                stream=True,
                options={"num_predict": 60},
            )
        )
        calls = [call for c in chunks for call in (c.message.tool_calls or [])]
        content = "".join(c.message.content or "" for c in chunks)
    else:
        answer = client.chat(
            model=QWEN, messages=messages, tools=[WEATHER_TOOL], options={"num_predict": 60}
        )
        calls = answer.message.tool_calls or []
        content = answer.message.content
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}
    assert "tool_call" not in content and "get_weather" not in content


def test_tool_result_is_used_in_the_answer(client: ollama.Client):
    messages = [
        {
            "role": "system",
            "content": "You are a helpful assistant. When a tool result is available, "
            "answer the user's question with it in one sentence.",
        },
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look that up.",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "22 degrees Celsius and sunny", "tool_name": "get_weather"},
    ]
    answer = client.chat(
        model=QWEN, messages=messages, tools=[WEATHER_TOOL], options={"num_predict": 40}
    )
    assert "22" in answer.message.content
    assert not answer.message.tool_calls


def test_format_json_schema(client: ollama.Client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    answer = client.chat(
        model=QWEN,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        format=schema,
        options={"num_predict": 40},
    )
    value = json.loads(answer.message.content)
    assert set(value) >= {"city", "country"}


def test_embed_and_embeddings(client: ollama.Client):
    result = client.embed(model=MINILM, input=["a cat sits on the mat", "a kitten rests on a rug"])
    vectors = np.array(result.embeddings)
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert result.prompt_eval_count > 0
    legacy = client.embeddings(model=MINILM, prompt="hello world")
    assert len(legacy.embedding) == 384
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model=GEMMA, input="x")
    assert info.value.status_code == 400


def test_list_show_ps_copy_delete(client: ollama.Client):
    names = {m.model for m in client.list().models}
    assert {GEMMA, QWEN, MINILM} <= names
    shown = client.show(QWEN)
    assert "tools" in shown.capabilities and "completion" in shown.capabilities
    assert shown.details.family == "qwen2"
    assert shown.modelinfo["general.architecture"] == "qwen2"
    client.generate(model=GEMMA, prompt="hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert GEMMA in running and running[GEMMA].context_length == 1024
    client.copy(GEMMA, "copied-gemma:test")
    assert "copied-gemma:test" in {m.model for m in client.list().models}
    client.delete("copied-gemma:test")
    assert "copied-gemma:test" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("copied-gemma:test")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.show("no-such-model")
    assert info.value.status_code == 404


def test_create_from_existing_model_with_system(client: ollama.Client):
    progress = list(
        client.create(
            model="gemma-pirate:latest", from_=GEMMA, system="You are a pirate.", stream=True
        )
    )
    assert progress[-1].status == "success"
    shown = client.show("gemma-pirate")
    assert 'SYSTEM "You are a pirate."' in shown.modelfile or "You are a pirate." in shown.modelfile
    raw = httpx.post(
        client._client.base_url.join("/api/show"), json={"model": "gemma-pirate"}
    ).json()
    assert raw["system"] == "You are a pirate."
    client.delete("gemma-pirate")


def test_version_and_root(server: str):
    assert httpx.get(server + "/").text == "Ollama is running"
    assert httpx.get(server + "/api/version").json()["version"]


def test_load_and_unload_with_empty_prompt(client: ollama.Client):
    loaded = client.generate(model=GEMMA, prompt="")
    assert loaded.done_reason == "load"
    unloaded = client.generate(model=GEMMA, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert GEMMA not in {m.model for m in client.ps().models}


async def test_async_client(server: str):
    client = ollama.AsyncClient(host=server)
    answer = await client.generate(
        model=GEMMA, prompt="1, 2, 3,", raw=True, options={"num_predict": 3}
    )
    assert answer.done
    parts = []
    async for part in await client.chat(
        model=GEMMA,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        options={"num_predict": 3},
    ):
        parts.append(part)
    assert parts[-1].done
    embedded = await client.embed(model=MINILM, input="hello")
    assert len(embedded.embeddings[0]) == 384
    assert GEMMA in {m.model for m in (await client.list()).models}


@pytest.mark.registry
def test_create_from_uploaded_gguf_then_push_delete_pull(
    client: ollama.Client, registry_server: str, minilm_gguf
):
    digest = client.create_blob(minilm_gguf)
    progress = list(
        client.create(model="uploaded-minilm", files={"minilm.gguf": digest}, stream=True)
    )
    assert progress[-1].status == "success"
    assert "embedding" in client.show("uploaded-minilm").capabilities
    remote = f"{registry_server}/library/uploaded-minilm:v1"
    client.copy("uploaded-minilm", remote)
    before = client.show(remote).modelfile
    pushed = list(client.push(remote, insecure=True, stream=True))
    assert pushed[-1].status == "success"
    assert any(p.status.startswith("pushing ") for p in pushed)
    client.delete(remote)
    client.delete("uploaded-minilm")
    pulled = list(client.pull(remote, insecure=True, stream=True))
    assert [p.status for p in pulled][0] == "pulling manifest"
    assert pulled[-1].status == "success"
    assert client.show(remote).modelfile == before
    vectors = client.embed(model=remote, input="hello").embeddings
    assert len(vectors[0]) == 384
    with pytest.raises(ollama.ResponseError):
        client.pull(f"{registry_server}/library/uploaded-minilm:missing", insecure=True)
    client.delete(remote)


def test_suffix_fill_in_the_middle_with_fim_tokens(client: ollama.Client):
    answer = client.generate(
        model=QWEN,
        prompt="def add(a, b):\n    ",
        suffix="\n\nprint(add(1, 2))\n",
        options={"num_predict": 12},
    )
    assert "a + b" in answer.response
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MINILM, prompt="x", suffix="y")
    assert info.value.status_code == 400


def test_a_truncated_prompt_is_reported_or_refused(server: str):
    import httpx

    body = {
        "model": GEMMA,
        "prompt": "word " * 400,
        "raw": True,
        "stream": False,
        "options": {"num_ctx": 128, "num_predict": 2},
    }
    answer = httpx.post(server + "/api/generate", json=body, timeout=60).json()
    assert answer["prompt_truncated"] is True and answer["prompt_eval_count"] < 128
    refused = httpx.post(server + "/api/generate", json={**body, "truncate": False}, timeout=60)
    assert refused.status_code == 400
    assert "exceeds the context length" in refused.json()["error"]


def test_metrics_health_and_usage(client: ollama.Client, server: str):
    client.generate(model=GEMMA, prompt="1, 2,", raw=True, options={"num_predict": 3})
    metrics = httpx.get(server + "/metrics").text
    for name in (
        "power_http_requests_total",
        "power_http_request_seconds_bucket",
        "power_time_to_first_token_seconds_count",
        "power_prompt_tokens_total",
        "power_generated_tokens_total",
        "power_loaded_models",
        "power_queue_depth",
    ):
        assert name in metrics, name
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["queue"]["max"] == 512
    assert GEMMA in {m["name"] for m in health["loaded_models"]}
    usage = {m["model"]: m for m in httpx.get(server + "/v1/usage").json()["models"]}
    assert usage[GEMMA]["completion_tokens"] >= 3 and usage[GEMMA]["requests"] >= 1
