"""Anthropic Messages translation: requests to native ones, native chunks to Anthropic's
message and stream events, event by event on scripted generations (no model).

Every event is validated with the `anthropic` SDK's own types and accumulated with the SDK's
own stream accumulator: the streamed message must equal the non-streamed one."""

from __future__ import annotations

import base64
import json
from typing import Any

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SdkMessage
from anthropic.types import RawMessageStreamEvent

from power.http.anthropic_compat import (
    MessageStream,
    anthropic_error,
    anthropic_message,
    chat_request_from_anthropic,
    count_request_from_anthropic,
    error_type,
    stop_reason,
)
from power.http.anthropic_schemas import (
    CountTokensRequest,
    MessagesRequest,
    think_from_budget,
)
from power.http.schemas import RequestError, parse_request
from power.messages import Message, ToolCall, ToolCallFunction, ToolChoice, ToolChoiceMode

PNG = b"\x89PNG\r\n\x1a\nfake"
B64 = base64.b64encode(PNG).decode()
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def parse(body: dict[str, Any], cls=MessagesRequest):
    return parse_request(cls, json.dumps(body))


def base(**more: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], **more}


# ---------------------------------------------------------------- requests


def test_a_full_request_becomes_a_native_chat_request():
    req = parse(
        base(
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Use the tool.", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "x"}},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": B64},
                        },
                    ],
                },
            ],
            stop_sequences=["END"],
            temperature=0,
            top_p=0.5,
            top_k=7,
            tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            thinking={"type": "enabled", "budget_tokens": 10000},
            metadata={"user_id": "u"},
            stream=True,
            options={"num_ctx": 512, "temperature": 0.9},
            keep_alive="1m",
        )
    )
    native = chat_request_from_anthropic(req)
    system, user, assistant, tool, user2 = native.messages
    assert system == Message(role="system", content="Be brief.\nBe kind.")
    assert user == Message(role="user", content="Weather?")
    assert assistant.content == "Let me look." and assistant.thinking == "Use the tool."
    assert assistant.tool_calls == [
        ToolCall(id="toolu_1", function=ToolCallFunction("get_weather", {"city": "Paris"}, 0))
    ]
    assert (tool.role, tool.content, tool.tool_call_id, tool.tool_name) == (
        "tool",
        "sunny",
        "toolu_1",
        "get_weather",
    )
    assert user2.content == "And tomorrow?" and user2.images == [PNG]
    assert [t.function.name for t in native.tools] == ["get_weather"]  # the server tool dropped
    assert native.tool_choice == ToolChoice(ToolChoiceMode.REQUIRED, parallel=False)
    assert native.options == {
        "num_ctx": 512,
        "temperature": 0.0,
        "num_predict": 32,
        "top_p": 0.5,
        "top_k": 7,
        "stop": ["END"],
    }
    assert native.think == "medium" and native.stream is True and native.keep_alive == 60


def test_defaults_and_count_tokens_request():
    native = chat_request_from_anthropic(parse(base()))
    assert native.stream is False and native.think is None and native.tools == []
    assert native.tool_choice == ToolChoice() and native.options == {"num_predict": 32}
    count = count_request_from_anthropic(
        parse(
            {
                "model": "m",
                "system": "s",
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "tool", "name": "f"},
            },
            CountTokensRequest,
        )
    )
    assert [m.role for m in count.messages] == ["system", "user"]
    assert count.tool_choice == ToolChoice(ToolChoiceMode.TOOL, name="f")


@pytest.mark.parametrize(
    ("thinking", "think"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 31999}, "high"),
        ({"type": "disabled"}, False),
        ({"type": "adaptive"}, True),
    ],
)
def test_thinking(thinking, think):
    assert parse(base(thinking=thinking)).think == think
    assert think_from_budget(None) == "low"
    assert parse(base(output_config={"effort": "high"})).think == "high"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": ""}, "model is required"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages[0].content[0]: unsupported content block type 'document'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "http://x"}}
                        ],
                    }
                ]
            },
            "image source type 'url' is not supported",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]},
            "needs an id and a name",
        ),
        ({"tool_choice": {"type": "tool"}}, "names no tool"),
        ({"tool_choice": "sometimes"}, "invalid tool_choice"),
        ({"thinking": {"type": "maybe"}}, "thinking.type"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"tools": [{"name": "f", "input_schema": []}]}, "tools[0].input_schema"),
    ],
)
def test_invalid_requests_are_400s_that_say_why(change, message):
    body = base()
    body.update(change)
    if body.get("max_tokens") is None:
        body.pop("max_tokens")
    with pytest.raises(RequestError) as info:
        parse(body)
    assert info.value.status == 400 and message in info.value.message


# ---------------------------------------------------------------- answers


def chunk(content="", thinking="", calls=(), done=False, **final) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = list(calls)
    return {
        "model": "qwen",
        "created_at": "2026-01-01T00:00:00Z",
        "message": message,
        "done": done,
        **final,
    }


def final(**more) -> dict[str, Any]:
    return chunk(done=True, done_reason="stop", prompt_eval_count=12, eval_count=5, **more)


CALL = {
    "id": "call_abc12345",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
}


def merged(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    from power.http.jobs import merge_stream

    return merge_stream(chunks, "chat")


def run_stream(chunks: list[dict[str, Any]]) -> tuple[list[tuple[str, dict]], SdkMessage]:
    """Events for the chunks, each validated by the SDK's types, and the SDK's accumulation."""
    stream = MessageStream("qwen", message_id="msg_1")
    events = [event for c in chunks for event in stream.translate(c)]
    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    for name, data in events:
        assert data["type"] == name
        if name == "ping":
            continue
        event = adapter.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs={})
    return events, snapshot


def shape(events) -> list[str]:
    """Event names, with the block type or delta type where there is one."""
    out = []
    for name, data in events:
        detail = (data.get("content_block") or data.get("delta") or {}).get("type")
        out.append(f"{name}:{detail}" if detail and name.startswith("content") else name)
    return out


def test_text_stream_event_by_event():
    chunks = [chunk("Hel"), chunk("lo"), final()]
    events, message = run_stream(chunks)
    assert shape(events) == [
        "message_start",
        "content_block_start:text",
        "ping",
        "content_block_delta:text_delta",
        "content_block_delta:text_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [d["index"] for n, d in events if n.startswith("content")] == [0, 0, 0, 0]
    start = events[0][1]["message"]
    assert start["id"] == "msg_1" and start["content"] == [] and start["stop_reason"] is None
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }
    whole = SdkMessage.model_validate(anthropic_message(merged(chunks), message_id="msg_1"))
    assert message.model_dump() == whole.model_dump()
    assert whole.content[0].text == "Hello" and whole.usage.input_tokens == 12


def test_thinking_then_text_then_tool_call():
    chunks = [
        chunk(thinking="Weather, so"),
        chunk(thinking=" the tool."),
        chunk("Checking."),
        chunk(calls=[CALL]),
        final(),
    ]
    events, message = run_stream(chunks)
    assert shape(events) == [
        "message_start",
        "content_block_start:thinking",
        "ping",
        "content_block_delta:thinking_delta",
        "content_block_delta:thinking_delta",
        "content_block_stop",
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_stop",
        "content_block_start:tool_use",
        "content_block_delta:input_json_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    indexes = [d["index"] for n, d in events if n.startswith("content")]
    assert indexes == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    tool_start = events[9][1]["content_block"]
    assert tool_start == {
        "type": "tool_use",
        "id": "call_abc12345",
        "name": "get_weather",
        "input": {},
    }
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    whole = SdkMessage.model_validate(anthropic_message(merged(chunks), message_id="msg_1"))
    assert message.model_dump() == whole.model_dump()
    assert [b.type for b in whole.content] == ["thinking", "text", "tool_use"]
    assert whole.content[2].input == {"city": "Paris"}


def test_a_tool_call_alone_and_two_calls():
    second = {"id": "call_2", "function": {"index": 1, "name": "get_time", "arguments": {}}}
    events, message = run_stream([chunk(calls=[CALL, second]), final()])
    assert shape(events)[1:4] == [
        "content_block_start:tool_use",
        "ping",
        "content_block_delta:input_json_delta",
    ]
    assert [b.name for b in message.content] == ["get_weather", "get_time"]
    assert message.content[1].input == {} and message.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("final_chunk", "reason", "sequence"),
    [
        (final(stop_sequence="END"), "stop_sequence", "END"),
        (chunk(done=True, done_reason="length", eval_count=3), "max_tokens", None),
        (final(), "end_turn", None),
    ],
)
def test_stop_reasons(final_chunk, reason, sequence):
    events, message = run_stream([chunk("text"), final_chunk])
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)
    whole = anthropic_message(merged([chunk("text"), final_chunk]))
    assert (whole["stop_reason"], whole["stop_sequence"]) == (reason, sequence)


def test_an_empty_answer_and_a_single_final_chunk():
    events, message = run_stream([final()])
    assert shape(events) == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 12  # known at once here
    assert message.content == [] and anthropic_message(final())["content"] == []


def test_stop_reason_and_errors():
    assert stop_reason({"done_reason": "length"}, True) == "tool_use"
    assert [error_type(s) for s in (400, 401, 403, 404, 413, 429, 500, 501, 503, 422)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "api_error",
        "overloaded_error",
        "invalid_request_error",
    ]
    assert anthropic_error(404, "model 'x' not found") == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'x' not found"},
    }
