"""A real `power serve` driven by openai-python's Responses API (`client.responses`)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import GEMMA, QWEN

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


def test_plain_answer(client: openai.OpenAI):
    response = client.responses.create(
        model=QWEN, input="What is the capital of France? One word.", temperature=0
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == QWEN
    assert "Paris" in response.output_text
    assert [item.type for item in response.output] == ["message"]
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )


def test_instructions(client: openai.OpenAI):
    response = client.responses.create(
        model=QWEN,
        instructions="Reply with only the word PONG, in capitals.",
        input="ping",
        temperature=0,
    )
    assert "pong" in response.output_text.lower()
    assert response.instructions == "Reply with only the word PONG, in capitals."


def test_streamed_text_equals_the_final_response(client: openai.OpenAI):
    with client.responses.stream(
        model=QWEN, input="Say hello in three words.", temperature=0
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 1 and final.output_text == "".join(deltas)
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_create_stream_events(client: openai.OpenAI):
    events = list(client.responses.create(model=QWEN, input="Hi", max_output_tokens=4, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # max_output_tokens reached
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    last = events[-1].response
    assert last.incomplete_details.reason == "max_output_tokens"
    assert last.usage.output_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call(client: openai.OpenAI, stream: bool):
    kwargs = dict(model=QWEN, input="What is the weather in Paris?", tools=[WEATHER], temperature=0)
    if stream:
        with client.responses.stream(**kwargs) as events:
            argument_deltas = [
                e.delta for e in events if e.type == "response.function_call_arguments.delta"
            ]
            response = events.get_final_response()
        assert json.loads("".join(argument_deltas)) == {"city": "Paris"}
    else:
        response = client.responses.create(**kwargs)
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.status == "completed"


def test_tool_result_sent_back(client: openai.OpenAI):
    response = client.responses.create(
        model=QWEN,
        tools=[WEATHER],
        temperature=0,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 °C"},
            {"role": "user", "content": "Thanks. Now answer my question in one sentence."},
        ],
    )
    assert response.output[-1].type == "message"
    assert "21" in response.output_text


def test_tool_choice_forces_a_named_call(client: openai.OpenAI):
    prose = "Write a haiku about the sea."
    free = client.responses.create(model=QWEN, input=prose, tools=[WEATHER], temperature=0)
    assert [item.type for item in free.output] == ["message"]
    forced = client.responses.create(
        model=QWEN,
        input=prose,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
    )
    (call,) = forced.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert forced.tool_choice.name == "get_weather"


def test_json_schema_format(client: openai.OpenAI):
    response = client.responses.create(
        model=QWEN,
        input="The capital of France, as JSON.",
        text={
            "format": {
                "type": "json_schema",
                "name": "capital",
                "schema": {
                    "type": "object",
                    "properties": {"capital": {"type": "string"}},
                    "required": ["capital"],
                },
            }
        },
        max_output_tokens=30,
    )
    assert "capital" in json.loads(response.output_text)


def test_errors_have_openai_shape(client: openai.OpenAI, server: str):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="stateless"):
        client.responses.create(model=QWEN, input="x", previous_response_id="resp_123")
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(openai.BadRequestError, match="does not support images"):
        client.responses.create(model=QWEN, input=[{"role": "user", "content": [image]}])
    with pytest.raises(openai.BadRequestError, match="function tools only"):
        client.responses.create(model=QWEN, input="x", tools=[{"type": "web_search"}])


def test_options_extension_and_usage_counts(client: openai.OpenAI, server: str):
    before = {m["model"]: m for m in httpx.get(server + "/v1/usage").json()["models"]}
    response = client.responses.create(
        model=GEMMA,
        input="Hi",
        max_output_tokens=2,
        extra_body={"options": {"num_ctx": 640}, "keep_alive": "10m"},
    )
    running = {m["name"]: m for m in httpx.get(server + "/api/ps").json()["models"]}
    assert running[GEMMA]["context_length"] == 640
    after = {m["model"]: m for m in httpx.get(server + "/v1/usage").json()["models"]}
    old = before.get(GEMMA, {"requests": 0, "completion_tokens": 0})
    assert after[GEMMA]["requests"] == old["requests"] + 1
    assert after[GEMMA]["completion_tokens"] == (
        old["completion_tokens"] + response.usage.output_tokens
    )
    metrics = httpx.get(server + "/metrics").text
    assert 'power_http_requests_total{route="/v1/responses",status="200"}' in metrics
