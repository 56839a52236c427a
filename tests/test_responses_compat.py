"""OpenAI Responses translation: requests to native ones, native chunks to the response object
and the Responses stream events, event by event on scripted generations (no model).

Every event is validated with the `openai` SDK's own event types and fed to the SDK's own
stream state (what `client.responses.stream(...)` runs): its final response must carry the same
output as the non-streamed answer."""

from __future__ import annotations

import base64
import json
from typing import Any

import pydantic
import pytest
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from power.http.jobs import merge_stream
from power.http.responses_compat import (
    ResponseStream,
    chat_request_from_responses,
    request_echo,
    responses_answer,
    tool_choice_json,
)
from power.http.responses_schemas import ResponsesRequest
from power.http.schemas import RequestError, parse_request
from power.messages import Message, ToolChoice, ToolChoiceMode

PNG = b"\x89PNG\r\n\x1a\nfake"
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def parse(body: dict[str, Any]) -> ResponsesRequest:
    return parse_request(ResponsesRequest, json.dumps(body))


# ---------------------------------------------------------------- requests


def test_a_string_input_with_instructions():
    req = parse(
        {
            "model": "m",
            "input": "hi",
            "instructions": "Be brief.",
            "max_output_tokens": 20,
            "temperature": 0,
        }
    )
    native = chat_request_from_responses(req)
    assert native.messages == [
        Message(role="system", content="Be brief."),
        Message(role="user", content="hi"),
    ]
    assert native.options == {"num_predict": 20, "temperature": 0.0}
    assert native.stream is False and native.format is None and native.think is None


def test_input_items_become_a_conversation():
    req = parse(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Weather"},
                        {"type": "input_text", "text": "in Paris?"},
                        {"type": "input_image", "image_url": DATA_URI, "detail": "auto"},
                    ],
                },
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [{"type": "summary_text", "text": "Use the tool."}],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "get_weather",
                    "arguments": '{"city": "Lyon"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "reasoning": {"effort": "high", "summary": "auto"},
            "store": False,
            "include": ["reasoning.encrypted_content"],
            "options": {"num_ctx": 1024},
            "stream": True,
        }
    )
    native = chat_request_from_responses(req)
    system, user, assistant, tool1, tool2, answer = native.messages
    assert system == Message(role="system", content="Rules.")
    assert user.content == "Weather\nin Paris?" and user.images == [PNG]
    assert assistant.thinking == "Use the tool."
    assert [(c.id, c.function.arguments, c.function.index) for c in assistant.tool_calls] == [
        ("call_1", {"city": "Paris"}, 0),
        ("call_2", {"city": "Lyon"}, 1),
    ]
    assert (tool1.content, tool1.tool_name, tool1.tool_call_id) == (
        "sunny",
        "get_weather",
        "call_1",
    )
    assert tool2.content == "rain" and tool2.tool_name == "get_weather"
    assert answer == Message(role="assistant", content="Sunny.")
    assert native.tool_choice == ToolChoice(ToolChoiceMode.TOOL, name="get_weather", parallel=False)
    assert native.format == {"type": "object"} and native.think == "high"
    assert native.options == {"num_ctx": 1024} and native.stream is True
    assert parse(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    ).text_format
    echo = request_echo(req)
    assert echo["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert echo["tools"][0]["name"] == "get_weather" and echo["parallel_tool_calls"] is False
    assert tool_choice_json(ToolChoice(ToolChoiceMode.REQUIRED)) == "required"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id is not supported"),
        ({"conversation": "conv_1"}, "conversation is not supported"),
        ({"background": True}, "background is not supported"),
        ({"input": []}, "at least one input item"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "power is stateless"),
        ({"input": [{"type": "computer_call"}]}, "unsupported input item type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "file inputs"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "file_id images",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                    }
                ]
            },
            "image URLs",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{bad"}]},
            "input[0].arguments",
        ),
        ({"tools": [{"type": "web_search"}]}, "tool type 'web_search' is not supported"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"reasoning": {"effort": "huge"}}, "invalid reasoning effort"),
        ({"tool_choice": {"type": "mcp"}}, "unsupported tool_choice type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_invalid_requests_are_400s_that_say_why(change, message):
    body = {"model": "m", "input": "hi", **change}
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


def final(reason="stop") -> dict[str, Any]:
    return chunk(done=True, done_reason=reason, prompt_eval_count=12, eval_count=5)


CALL = {
    "id": "call_abc12345",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
}
ECHO = request_echo(parse({"model": "m", "input": "x"}))


def run_stream(chunks):
    """Events for the chunks, validated by the SDK's types and fed to the SDK's stream state;
    returns (events, the SDK's final response or None)."""
    stream = ResponseStream("qwen", echo=ECHO, response_id="resp_1")
    events = [event for c in chunks for event in stream.translate(c)]
    adapter = pydantic.TypeAdapter(ResponseStreamEvent)
    state = ResponseStreamState(input_tools=[TOOL], text_format=_omit())
    for number, (name, data) in enumerate(events):
        assert data["type"] == name and data["sequence_number"] == number
        state.handle_event(adapter.validate_python(data))
    return events, state._completed_response


def _omit():
    from openai import omit

    return omit


def names(events) -> list[str]:
    return [name for name, _ in events]


def comparable(output) -> list[dict]:
    """Output items without their ids (random on each side)."""
    items = [
        item if isinstance(item, dict) else item.model_dump(exclude_none=True) for item in output
    ]
    out = []
    for item in items:
        item = {k: v for k, v in item.items() if k != "id" and v is not None}
        if "content" in item:
            item["content"] = [
                {k: v for k, v in part.items() if k != "parsed"} for part in item["content"]
            ]
        out.append(item)
    return out


def test_text_stream_event_by_event():
    chunks = [chunk("Hel"), chunk("lo"), final()]
    events, response = run_stream(chunks)
    assert names(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0][1]["response"]["status"] == "in_progress"
    assert events[6][1]["text"] == "Hello"
    assert response.output_text == "Hello" and response.usage.total_tokens == 17
    whole = Response.model_validate(
        responses_answer(merge_stream(chunks, "chat"), response_id="resp_1", echo=ECHO)
    )
    assert whole.output_text == "Hello" and whole.status == "completed"
    assert comparable(response.output) == comparable(whole.output)


def test_reasoning_text_and_tool_calls():
    second = {
        "id": "call_2",
        "function": {"index": 1, "name": "get_weather", "arguments": {"city": "Lyon"}},
    }
    chunks = [
        chunk(thinking="Tool"),
        chunk(thinking=" time."),
        chunk("Checking."),
        chunk(calls=[CALL, second]),
        final(),
    ]
    events, response = run_stream(chunks)
    assert names(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        *[
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
        * 2,
        "response.completed",
    ]
    indexes = [d["output_index"] for _, d in events if "output_index" in d]
    assert indexes == [0] * 7 + [1] * 6 + [2] * 4 + [3] * 4
    assert [item.type for item in response.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert response.output[0].summary[0].text == "Tool time."
    calls = [
        (o.call_id, json.loads(o.arguments)) for o in response.output if o.type == "function_call"
    ]
    assert calls == [("call_abc12345", {"city": "Paris"}), ("call_2", {"city": "Lyon"})]
    whole = responses_answer(merge_stream(chunks, "chat"), response_id="resp_1", echo=ECHO)
    assert comparable(response.output) == comparable(Response.model_validate(whole).output)


def test_only_a_tool_call_has_no_message_item():
    events, response = run_stream([chunk(calls=[CALL]), final()])
    assert [item.type for item in response.output] == ["function_call"]
    whole = responses_answer(
        merge_stream([chunk(calls=[CALL]), final()], "chat"), response_id="r", echo=ECHO
    )
    assert [item["type"] for item in whole["output"]] == ["function_call"]


def test_an_empty_answer_still_has_a_message():
    events, response = run_stream([final()])
    assert response.output_text == "" and [o.type for o in response.output] == ["message"]


def test_a_length_cut_is_incomplete():
    chunks = [chunk("Once upon"), final("length")]
    events, response = run_stream(chunks)
    assert names(events)[-1] == "response.incomplete" and response is None  # no completed
    last = events[-1][1]["response"]
    assert last["status"] == "incomplete"
    assert last["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["output"][0]["status"] == "incomplete"
    whole = Response.model_validate(
        responses_answer(merge_stream(chunks, "chat"), response_id="r", echo=ECHO)
    )
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"


def test_a_failure_after_the_start():
    stream = ResponseStream("qwen", echo=ECHO)
    events = stream.translate(chunk("Hi")) + stream.failed(500, "model runner stopped")
    name, data = events[-1]
    assert name == "response.failed" and data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "server_error", "message": "model runner stopped"}
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
