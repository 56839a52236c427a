"""A real `power serve` driven by the real `anthropic` Python SDK (what Claude Code speaks).

The SDK 2.x has no `temperature` parameter: sampling options go in `extra_body`, as users
pass them."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import pytest

from conftest import GEMMA, QWEN, run_power_server

pytestmark = pytest.mark.slow

GREEDY = {"extra_body": {"temperature": 0}}
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="unused")


def test_plain_answer(client: anthropic.Anthropic):
    message = client.messages.create(
        model=QWEN,
        max_tokens=10,
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        **GREEDY,
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == QWEN
    assert [block.type for block in message.content] == ["text"]
    assert "Paris" in message.content[0].text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_system_prompt(client: anthropic.Anthropic):
    message = client.messages.create(
        model=QWEN,
        max_tokens=10,
        system=[{"type": "text", "text": "Reply with only the word PONG, in capitals."}],
        messages=[{"role": "user", "content": "ping"}],
        **GREEDY,
    )
    assert "pong" in message.content[0].text.lower()


def test_stop_sequences(client: anthropic.Anthropic):
    message = client.messages.create(
        model=QWEN,
        max_tokens=40,
        stop_sequences=["5"],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        **GREEDY,
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    text = message.content[0].text
    assert "4" in text and "5" not in text


def test_max_tokens(client: anthropic.Anthropic):
    message = client.messages.create(
        model=QWEN,
        max_tokens=3,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        **GREEDY,
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_streamed_text_equals_the_final_message(client: anthropic.Anthropic):
    with client.messages.stream(
        model=QWEN,
        max_tokens=30,
        messages=[{"role": "user", "content": "Say hello in three words."}],
        **GREEDY,
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_raw_event_order(client: anthropic.Anthropic):
    events = list(
        client.messages.create(
            model=QWEN,
            max_tokens=5,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            **GREEDY,
        )
    )
    kinds = [event.type for event in events]  # the SDK skips pings
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call(client: anthropic.Anthropic, stream: bool):
    kwargs = dict(model=QWEN, max_tokens=60, tools=[WEATHER], messages=ASK_WEATHER, **GREEDY)
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    (call,) = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    assert call.id.startswith("call_") and message.stop_reason == "tool_use"
    assert not any("tool_call" in getattr(block, "text", "") for block in message.content)


def test_tool_result_sent_back(client: anthropic.Anthropic):
    messages = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "Sunny, 21 degrees Celsius"}],
                },
                {"type": "text", "text": "Thanks. Now answer my question in one sentence."},
            ],
        },
    ]
    message = client.messages.create(
        model=QWEN, max_tokens=60, tools=[WEATHER], messages=messages, **GREEDY
    )
    assert message.stop_reason == "end_turn"
    assert "21" in message.content[0].text


def test_tool_choice_forces_a_named_call(client: anthropic.Anthropic):
    prose = [{"role": "user", "content": "Write a haiku about the sea."}]
    free = client.messages.create(
        model=QWEN, max_tokens=40, tools=[WEATHER], messages=prose, **GREEDY
    )
    assert [block.type for block in free.content] == ["text"]  # the model prefers prose
    forced = client.messages.create(
        model=QWEN,
        max_tokens=60,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=prose,
        **GREEDY,
    )
    (call,) = forced.content
    assert call.type == "tool_use" and call.name == "get_weather"
    assert isinstance(call.input["city"], str) and forced.stop_reason == "tool_use"
    anything = client.messages.create(
        model=QWEN,
        max_tokens=60,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=prose,
        **GREEDY,
    )
    assert [block.type for block in anything.content] == ["tool_use"]


def test_tool_choice_none_shows_no_tools(client: anthropic.Anthropic):
    message = client.messages.create(
        model=QWEN,
        max_tokens=40,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=ASK_WEATHER,
        **GREEDY,
    )
    assert all(block.type == "text" for block in message.content)


def test_count_tokens(client: anthropic.Anthropic):
    bare = client.messages.count_tokens(model=QWEN, messages=ASK_WEATHER)
    with_tools = client.messages.count_tokens(model=QWEN, messages=ASK_WEATHER, tools=[WEATHER])
    with_system = client.messages.count_tokens(
        model=QWEN, messages=ASK_WEATHER, system="You are a meteorologist who loves details. " * 8
    )
    assert 10 < bare.input_tokens < with_tools.input_tokens
    assert bare.input_tokens < with_system.input_tokens


def test_errors_have_anthropic_shape(client: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"] == {
        "type": "not_found_error",
        "message": "model 'no-such-model' not found",
    }
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=QWEN, max_tokens=5, messages=[])
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with pytest.raises(anthropic.BadRequestError, match="does not support images"):
        client.messages.create(  # the native chat route's answer for a model without vision
            model=QWEN,
            max_tokens=5,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}],
        )
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        client.messages.create(
            model=QWEN,
            max_tokens=5,
            messages=ASK_WEATHER,
            thinking={"type": "enabled", "budget_tokens": 2000},
        )


def test_options_extension_keep_alive_and_usage_counts(client: anthropic.Anthropic, server: str):
    before = {m["model"]: m for m in httpx.get(server + "/v1/usage").json()["models"]}
    message = client.messages.create(
        model=GEMMA,
        max_tokens=2,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"options": {"num_ctx": 768}, "keep_alive": "10m"},
    )
    running = {m["name"]: m for m in httpx.get(server + "/api/ps").json()["models"]}
    assert running[GEMMA]["context_length"] == 768
    after = {m["model"]: m for m in httpx.get(server + "/v1/usage").json()["models"]}
    old = before.get(GEMMA, {"requests": 0, "completion_tokens": 0})
    assert after[GEMMA]["requests"] == old["requests"] + 1
    assert after[GEMMA]["completion_tokens"] == old["completion_tokens"] + (
        message.usage.output_tokens
    )
    metrics = httpx.get(server + "/metrics").text
    assert 'power_http_requests_total{route="/v1/messages",status="200"}' in metrics


def test_api_key_as_x_api_key(tmp_path: Path, model_store: Path):
    store = tmp_path / "models"
    store.symlink_to(model_store)
    with run_power_server(store, {"POWER_API_KEY": "sesame"}) as url:
        good = anthropic.Anthropic(base_url=url, api_key="sesame")
        assert good.messages.count_tokens(model=GEMMA, messages=ASK_WEATHER).input_tokens > 0
        with pytest.raises(anthropic.AuthenticationError) as info:
            anthropic.Anthropic(base_url=url, api_key="wrong").messages.count_tokens(
                model=GEMMA, messages=ASK_WEATHER
            )
        assert info.value.body["error"]["type"] == "authentication_error"
        bearer = httpx.get(url + "/api/tags", headers={"Authorization": "Bearer sesame"})
        assert bearer.status_code == 200
        assert httpx.get(url + "/api/tags", headers={"x-api-key": "sesame"}).status_code == 200
        assert httpx.get(url + "/api/tags", headers={"x-api-key": "nope"}).status_code == 401
