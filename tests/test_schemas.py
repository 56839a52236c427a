"""Request parsing at the HTTP edge: native and OpenAI request types, errors and messages."""

from __future__ import annotations

import base64
import json
import logging
import math

import pytest

from power.http.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    think_from_reasoning_effort,
)
from power.http.schemas import (
    ChatRequest,
    CopyRequest,
    DeleteRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    PullRequest,
    PushRequest,
    RequestError,
    ShowRequest,
    message_to_json,
    parse_request,
    tool_call_to_json,
)
from power.messages import Message, ToolCall, ToolCallFunction
from power.registry.create import CreateRequest

PNG = b"\x89PNG\r\n\x1a\nfake"
PNG_B64 = base64.b64encode(PNG).decode()


def parse(cls, body):
    return parse_request(cls, json.dumps(body) if not isinstance(body, bytes | str) else body)


def error(cls, body) -> str:
    with pytest.raises(RequestError) as info:
        parse(cls, body)
    assert info.value.status == 400
    return info.value.message


# ---------------------------------------------------------------- bodies and models

ALL_NATIVE = [
    GenerateRequest,
    ChatRequest,
    EmbedRequest,
    EmbeddingsRequest,
    PullRequest,
    PushRequest,
    CreateRequest,
    ShowRequest,
    DeleteRequest,
]
ALL_OPENAI = [ChatCompletionRequest, CompletionRequest, EmbeddingRequest]


@pytest.mark.parametrize("cls", [*ALL_NATIVE, CopyRequest, *ALL_OPENAI])
@pytest.mark.parametrize("body", [b"", b"  \n", "", None])
def test_empty_body(cls, body):
    with pytest.raises(RequestError) as info:
        parse_request(cls, body)
    assert (info.value.status, info.value.message) == (400, "missing request body")


@pytest.mark.parametrize("cls", ALL_NATIVE + ALL_OPENAI)
def test_invalid_json(cls):
    assert error(cls, b'{"model": ').startswith("invalid JSON in request body")
    assert error(cls, b"\xff\xfe").startswith("invalid JSON in request body")
    assert error(cls, b"[1]") == "request body must be a JSON object, got array"


@pytest.mark.parametrize("cls", ALL_NATIVE + ALL_OPENAI)
def test_model_is_required(cls):
    assert error(cls, {}) == "model is required"
    assert error(cls, b"null") == "model is required"
    assert error(cls, {"model": ""}) == "model is required"


@pytest.mark.parametrize(
    "cls", [PullRequest, PushRequest, CreateRequest, ShowRequest, DeleteRequest]
)
def test_name_is_an_alias_of_model(cls):
    assert parse(cls, {"name": "llama3"}).model == "llama3"
    assert parse(cls, {"model": "a", "name": "b"}).model == "a"
    assert parse(cls, {"model": "", "name": "b"}).model == "b"


def test_copy_needs_source_and_destination():
    assert error(CopyRequest, {"destination": "b"}) == 'source "" is invalid'
    assert error(CopyRequest, {"source": "a"}) == 'destination "" is invalid'
    request = parse(CopyRequest, {"source": "a", "destination": "b"})
    assert (request.source, request.destination) == ("a", "b")


# ---------------------------------------------------------------- generate


def test_generate_defaults():
    request = parse(GenerateRequest, {"model": "m"})
    assert request.prompt == "" and request.stream is True and request.raw is False
    assert request.format is None and request.keep_alive is None and request.think is None
    assert request.options == {} and request.images == [] and request.context == []
    assert request.truncate is None and request.shift is None
    assert (request.logprobs, request.top_logprobs) == (False, 0)


def test_generate_all_fields():
    request = parse(
        GenerateRequest,
        {
            "model": "m",
            "prompt": "p",
            "suffix": "s",
            "system": "sys",
            "template": "{{ .Prompt }}",
            "context": [1, 2, 3.0],
            "stream": False,
            "format": {"type": "object"},
            "keep_alive": "1h30m",
            "images": [PNG_B64],
            "options": {"temperature": 0, "num_ctx": "8192", "stop": "x"},
            "think": "high",
            "truncate": False,
            "shift": True,
            "logprobs": True,
            "top_logprobs": 20,
            "unknown_key": "ignored",
        },
    )
    assert request.context == [1, 2, 3]
    assert request.format == {"type": "object"}
    assert request.keep_alive == 5400.0
    assert request.images == [PNG]
    assert request.options == {"temperature": 0.0, "num_ctx": 8192, "stop": ["x"]}
    assert request.think == "high"
    assert (request.truncate, request.shift, request.top_logprobs) == (False, True, 20)


def test_nulls_keep_defaults():
    request = parse(
        GenerateRequest,
        {"model": "m", "prompt": None, "stream": None, "options": None, "format": None},
    )
    assert (request.prompt, request.stream, request.options, request.format) == ("", True, {}, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": 5}, 'invalid value for "prompt": expected a string, got number'),
        ({"stream": "yes"}, 'invalid value for "stream": expected a boolean, got string'),
        ({"raw": 1}, 'invalid value for "raw": expected a boolean, got number'),
        ({"context": "1,2"}, 'invalid value for "context": expected an array, got string'),
        ({"context": [1, "a"]}, 'invalid value for "context[1]": expected an integer, got string'),
        ({"context": [1.5]}, 'invalid value for "context[0]": expected an integer, got number'),
        (
            {"top_logprobs": True},
            'invalid value for "top_logprobs": expected an integer, got boolean',
        ),
        (
            {"images": "abc"},
            'invalid value for "images": expected an array of base64 strings, got string',
        ),
        (
            {"images": ["%%%"]},
            'invalid value for "images[0]": expected valid base64 image data, got string',
        ),
        ({"images": [7]}, 'invalid value for "images[0]": expected a base64 string, got number'),
    ],
)
def test_generate_wrong_types_name_the_field(body, message):
    assert error(GenerateRequest, {"model": "m", **body}) == message


@pytest.mark.parametrize("extra", [{"template": "x"}, {"system": "x"}, {"context": [1]}])
def test_raw_refuses_template_system_context(extra):
    message = error(GenerateRequest, {"model": "m", "raw": True, **extra})
    assert message == "raw mode does not support template, system, or context"
    parse(GenerateRequest, {"model": "m", "raw": False, **extra})


@pytest.mark.parametrize("cls", [GenerateRequest, ChatRequest, ChatCompletionRequest])
@pytest.mark.parametrize("value", [-1, 21, 100])
def test_top_logprobs_range(cls, value):
    body = {"model": "m", "top_logprobs": value, "messages": [{"role": "user", "content": "x"}]}
    assert error(cls, body) == "top_logprobs must be between 0 and 20"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("json", "json"), ("", None), ({"type": "object"}, {"type": "object"}), ({}, {})],
)
def test_format_values(value, expected):
    assert parse(GenerateRequest, {"model": "m", "format": value}).format == expected


@pytest.mark.parametrize("value", ["xml", 5, True, ["json"]])
def test_bad_format(value):
    assert error(GenerateRequest, {"model": "m", "format": value}).startswith("invalid format")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("max", "max"),
    ],
)
def test_think_values(value, expected):
    assert parse(ChatRequest, {"model": "m", "think": value}).think == expected


@pytest.mark.parametrize("value", ["HIGH", "extreme", 1, "true", {}])
def test_bad_think(value):
    assert "think" in error(ChatRequest, {"model": "m", "think": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5m", 300.0), (10, 10.0), ("0", 0.0), (-1, math.inf), ("-1s", math.inf)],
)
def test_keep_alive(value, expected):
    assert parse(ChatRequest, {"model": "m", "keep_alive": value}).keep_alive == expected


def test_bad_keep_alive():
    assert "keep_alive" in error(EmbedRequest, {"model": "m", "keep_alive": "soon"})
    assert "keep_alive" in error(EmbedRequest, {"model": "m", "keep_alive": True})


def test_options_of_the_wrong_type_are_refused():
    message = error(GenerateRequest, {"model": "m", "options": {"temperature": "hot"}})
    assert "temperature" in message
    assert "num_ctx" in error(ChatRequest, {"model": "m", "options": {"num_ctx": [1]}})
    assert error(ChatRequest, {"model": "m", "options": [1]}) == "options must be an object"


def test_unknown_options_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        request = parse(ChatRequest, {"model": "m", "options": {"bogus": 1, "top_k": 5}})
    assert request.options == {"top_k": 5}
    assert "bogus" in caplog.text


# ---------------------------------------------------------------- chat


def test_chat_messages():
    request = parse(
        ChatRequest,
        {
            "model": "m",
            "messages": [
                {"role": "SYSTEM", "content": "be brief"},
                {"role": "user", "content": "look", "images": [PNG_B64]},
                {
                    "role": "Assistant",
                    "content": "",
                    "thinking": "hmm",
                    "tool_calls": [
                        {"function": {"name": "f", "arguments": {"a": 1}}},
                        {
                            "id": "call_x",
                            "function": {"index": 5, "name": "g", "arguments": '{"b": 2}'},
                        },
                    ],
                },
                {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "call_x"},
                {"role": "user", "content": None},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "description": "does f",
                        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
                    },
                },
                {"function": {"name": "g"}},
            ],
        },
    )
    system, user, assistant, tool, empty = request.messages
    assert system == Message(role="system", content="be brief")
    assert user.images == [PNG]
    assert assistant.role == "assistant" and assistant.thinking == "hmm"
    assert assistant.tool_calls == [
        ToolCall(function=ToolCallFunction(name="f", arguments={"a": 1}, index=0)),
        ToolCall(id="call_x", function=ToolCallFunction(name="g", arguments={"b": 2}, index=5)),
    ]
    assert (tool.tool_name, tool.tool_call_id) == ("f", "call_x")
    assert empty.content == ""
    assert [t.function.name for t in request.tools] == ["f", "g"]
    assert request.tools[0].function.parameters["properties"]["a"] == {"type": "integer"}
    assert request.tools[1].type == "function"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hi", 'invalid value for "messages": expected an array, got string'),
        (["hi"], 'invalid value for "messages[0]": expected an object, got string'),
        (
            [{"content": "x"}],
            'invalid value for "messages[0].role": expected a role string, got null',
        ),
        (
            [{"role": "user", "content": 1}],
            'invalid value for "messages[0].content": expected a string, got number',
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
            'invalid value for "messages[0].content": expected a string, got array',
        ),
        (
            [{"role": "user", "images": ["***"]}],
            'invalid value for "messages[0].images[0]": expected valid base64 image data, got string',
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}],
            'invalid value for "messages[0].tool_calls[0].function.arguments": expected an object, got array',
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}],
                }
            ],
            'invalid value for "messages[0].tool_calls[0].function.arguments": '
            "expected an object or a JSON string of an object, got string",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"name": "f"}]}],
            'invalid value for "messages[0].tool_calls[0].function": expected an object, got null',
        ),
    ],
)
def test_bad_messages(messages, message):
    assert error(ChatRequest, {"model": "m", "messages": messages}) == message


def test_bad_tools():
    message = error(ChatRequest, {"model": "m", "tools": [{"type": "function"}]})
    assert message == 'invalid value for "tools[0].function": expected an object, got null'
    message = error(ChatRequest, {"model": "m", "tools": [{"function": {"name": ""}}]})
    assert (
        message
        == 'invalid value for "tools[0].function.name": expected a tool name string, got an empty string'
    )


# ---------------------------------------------------------------- embeddings, create, show


@pytest.mark.parametrize(
    ("value", "expected"),
    [("text", ["text"]), ("", []), (["a", "b"], ["a", "b"]), ([], []), (None, [])],
)
def test_embed_input(value, expected):
    assert parse(EmbedRequest, {"model": "m", "input": value}).input == expected


@pytest.mark.parametrize("value", [5, [1, 2], ["a", 1], {"a": 1}, [["a"]]])
def test_embed_input_of_the_wrong_type(value):
    assert error(EmbedRequest, {"model": "m", "input": value}) == "invalid input type"


def test_embed_options():
    request = parse(EmbedRequest, {"model": "m", "input": "x", "truncate": False, "dimensions": 64})
    assert (request.truncate, request.dimensions) == (False, 64)
    assert parse(EmbedRequest, {"model": "m"}).truncate is True
    assert "dimensions" in error(EmbedRequest, {"model": "m", "dimensions": -1})


def test_legacy_embeddings():
    request = parse(
        EmbeddingsRequest, {"model": "m", "prompt": "hello", "options": {"num_ctx": 512}}
    )
    assert (request.prompt, request.options) == ("hello", {"num_ctx": 512})


def test_create_request():
    request = parse(
        CreateRequest,
        {
            "model": "mine",
            "from": "llama3",
            "files": {"model.gguf": "sha256:" + "0" * 64},
            "adapters": {"lora.gguf": "sha256:" + "1" * 64},
            "template": "{{ .Prompt }}",
            "system": "",
            "license": ["MIT", "Apache"],
            "parameters": {"temperature": 0.5, "stop": ["<|end|>", "<|user|>"]},
            "messages": [{"role": "user", "content": "hi"}],
            "quantization": "q4_K_M",
            "stream": False,
        },
    )
    assert request.from_ == "llama3"
    assert request.files == {"model.gguf": "sha256:" + "0" * 64}
    assert request.template == "{{ .Prompt }}" and request.system == ""
    assert request.license == ["MIT", "Apache"]
    assert request.parameters == {"temperature": 0.5, "stop": ["<|end|>", "<|user|>"]}
    assert request.messages == [Message(role="user", content="hi")]
    assert request.quantize == "q4_K_M" and request.stream is False
    bare = parse(CreateRequest, {"model": "x", "license": "MIT"})
    assert (bare.template, bare.system, bare.license) == (None, None, ["MIT"])
    assert error(CreateRequest, {"model": "x", "files": {"a": 1}}) == (
        'invalid value for "files.a": expected a string, got number'
    )
    assert "temperature" in error(CreateRequest, {"model": "x", "parameters": {"temperature": "x"}})


def test_show_pull_push_delete():
    show = parse(ShowRequest, {"model": "m", "verbose": True})
    assert show.verbose is True
    pull = parse(PullRequest, {"model": "m", "insecure": True, "stream": False, "username": "u"})
    assert (pull.insecure, pull.stream) == (True, False)
    assert parse(PushRequest, {"model": "ns/m:t"}).model == "ns/m:t"
    assert parse(DeleteRequest, {"model": "m"}).model == "m"


# ---------------------------------------------------------------- OpenAI requests


def test_openai_chat_request():
    request = parse(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is"},
                        {"type": "text", "text": "this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + PNG_B64},
                        },
                        {"type": "image_url", "image_url": "data:;base64," + PNG_B64},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
                {"role": "tool", "name": "g", "content": "ok2"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 10,
            "stop": "END",
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "logprobs": True,
            "top_logprobs": 3,
            "tool_choice": "auto",
            "user": "ignored",
        },
    )
    system, user, assistant, tool, tool2 = request.messages
    assert system == Message(role="system", content="rules")
    assert user.content == "What is\nthis?" and user.images == [PNG, PNG]
    assert assistant.content == "" and assistant.tool_calls[0].function.arguments == {"a": 1}
    assert assistant.tool_calls[0].id == "call_1"
    assert (tool.tool_name, tool.tool_call_id) == ("f", "call_1")
    assert tool2.tool_name == "g"
    assert request.include_usage is True and request.stream is True
    assert request.stop == ["END"] and request.temperature == 0.0 and request.max_tokens == 10
    assert request.format == "json"
    assert (request.logprobs, request.top_logprobs) == (True, 3)


def test_openai_chat_defaults_and_errors():
    request = parse(
        ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert request.stream is False and request.include_usage is False and request.think is None
    body = {"model": "m", "messages": []}
    assert error(ChatCompletionRequest, body) == "[] is too short - 'messages'"
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}
        ],
    }
    assert "image URLs are not supported" in error(ChatCompletionRequest, body)
    body["messages"][0]["content"][0]["image_url"] = "data:image/png;base64,@@@"
    assert "invalid image input" in error(ChatCompletionRequest, body)
    body["messages"][0]["content"][0] = {"type": "input_audio", "input_audio": {}}
    assert "unsupported content part type" in error(ChatCompletionRequest, body)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}
    assert "n must be 1" in error(ChatCompletionRequest, body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "low"}, "low"),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning": {"effort": "high"}}, "high"),
        ({"reasoning": {"effort": "xhigh"}, "reasoning_effort": "low"}, "max"),
        ({"think": True}, True),
        ({}, None),
    ],
)
def test_openai_reasoning_effort(body, expected):
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert parse(ChatCompletionRequest, {**base, **body}).think == expected


def test_bad_reasoning_effort():
    assert think_from_reasoning_effort(None) is None
    with pytest.raises(RequestError):
        think_from_reasoning_effort("lots")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
    ],
)
def test_response_format(value, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": value}
    assert parse(ChatCompletionRequest, body).format == expected


def test_bad_response_format():
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert "response_format" in error(
        ChatCompletionRequest, {**base, "response_format": {"type": "yaml"}}
    )
    message = error(ChatCompletionRequest, {**base, "response_format": {"type": "json_schema"}})
    assert (
        message
        == 'invalid value for "response_format.json_schema.schema": expected a JSON schema object, got null'
    )
    message = error(ChatCompletionRequest, {**base, "stop": [1]})
    assert (
        message == 'invalid value for "stop": expected a string or an array of strings, got array'
    )


def test_openai_completion_request():
    request = parse(
        CompletionRequest,
        {
            "model": "m",
            "prompt": ["def f():"],
            "suffix": "return x",
            "logprobs": 2,
            "stop": ["\n\n"],
        },
    )
    assert (request.prompt, request.suffix, request.logprobs, request.stop) == (
        "def f():",
        "return x",
        2,
        ["\n\n"],
    )
    assert "prompt must be a string" in error(
        CompletionRequest, {"model": "m", "prompt": ["a", "b"]}
    )
    assert "prompt must be a string" in error(CompletionRequest, {"model": "m", "prompt": [1, 2]})
    assert error(CompletionRequest, {"model": "m", "echo": True}) == "echo is not supported"
    assert "logprobs" in error(CompletionRequest, {"model": "m", "logprobs": 30})


def test_openai_embedding_request():
    request = parse(
        EmbeddingRequest, {"model": "m", "input": "", "encoding_format": "BASE64", "dimensions": 8}
    )
    assert (request.input, request.encoding_format, request.dimensions) == ([""], "base64", 8)
    assert parse(EmbeddingRequest, {"model": "m", "input": ["a"]}).encoding_format == "float"
    for bad in (None, [], [1, 2], [[1]], 3):
        body = {"model": "m"} if bad is None else {"model": "m", "input": bad}
        assert error(EmbeddingRequest, body) == "invalid input"
    assert error(EmbeddingRequest, {"model": "m", "input": "x", "encoding_format": "int8"}) == (
        "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."
    )


# ---------------------------------------------------------------- wire forms


def test_message_and_tool_call_to_json():
    call = ToolCall(id="call_abc", function=ToolCallFunction(name="f", arguments={"a": 1}, index=0))
    assert tool_call_to_json(call) == {
        "id": "call_abc",
        "function": {"index": 0, "name": "f", "arguments": {"a": 1}},
    }
    message = Message(role="assistant", content="hi", images=[PNG], thinking="t", tool_calls=[call])
    out = message_to_json(message)
    assert out == {
        "role": "assistant",
        "content": "hi",
        "thinking": "t",
        "images": [PNG_B64],
        "tool_calls": [tool_call_to_json(call)],
    }
    assert message_to_json(Message(role="user")) == {"role": "user", "content": ""}
    # The wire form parses back to the same message.
    body = {"model": "m", "messages": [out]}
    assert parse(ChatRequest, body).messages == [message]
