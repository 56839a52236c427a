"""`tool_choice` holds on the OpenAI chat route and on the native /api/chat (power's extension
field; Ollama ignores tool_choice): a prompt the model answers in prose gets a call when one is
forced, and no tools at all with "none". (The Anthropic and Responses routes have the same
tests in their own files.)"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import QWEN

pytestmark = pytest.mark.slow

WEATHER = {
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
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
PROSE = [{"role": "user", "content": "Write a haiku about the sea."}]


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


def chat(server: str, **body) -> dict:
    body = {"model": QWEN, "stream": False, "options": {"temperature": 0}, **body}
    response = httpx.post(server + "/api/chat", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_openai_chat_named_tool_choice(client: openai.OpenAI):
    kwargs = dict(model=QWEN, messages=PROSE, tools=[WEATHER, TIME], max_tokens=60, temperature=0)
    free = client.chat.completions.create(**kwargs)
    assert free.choices[0].message.tool_calls is None  # the model prefers prose
    forced = client.chat.completions.create(
        tool_choice={"type": "function", "function": {"name": "get_time"}}, **kwargs
    )
    choice = forced.choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and choice.finish_reason == "tool_calls"
    assert isinstance(json.loads(call.function.arguments)["timezone"], str)


def test_openai_chat_required_streams_a_call(client: openai.OpenAI):
    names, arguments = [], ""
    for chunk in client.chat.completions.create(
        model=QWEN,
        messages=PROSE,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
        stream=True,
    ):
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names.append(call.function.name)
            arguments += call.function.arguments or ""
    assert names == ["get_weather"] and "city" in json.loads(arguments)


def test_native_chat_tool_choice_extension(server: str):
    free = chat(server, messages=PROSE, tools=[WEATHER])
    assert "tool_calls" not in free["message"]
    forced = chat(
        server,
        messages=PROSE,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = forced["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"]["city"], str)
    assert forced["message"]["content"] == "" and "stop_sequence" not in forced


def test_native_chat_tool_choice_none(server: str):
    answer = chat(
        server,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="none",
        options={"temperature": 0, "num_predict": 30},
    )
    assert "tool_calls" not in answer["message"]


def test_tool_choice_errors(server: str, client: openai.OpenAI):
    response = httpx.post(
        server + "/api/chat",
        json={"model": QWEN, "messages": PROSE, "tool_choice": "required", "stream": False},
    )
    assert response.status_code == 400 and "no tools" in response.json()["error"]
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(
            model=QWEN,
            messages=PROSE,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    with pytest.raises(openai.BadRequestError, match="format"):
        client.chat.completions.create(
            model=QWEN,
            messages=PROSE,
            tools=[WEATHER],
            tool_choice="required",
            response_format={"type": "json_object"},
        )
