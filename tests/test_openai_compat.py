"""OpenAI translation: requests to native ones, native chunks to OpenAI objects.

The OpenAI objects are also validated with the `openai` library's own response models, the
types its clients parse answers into.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from power.http.openai_compat import (
    ChatCompletionStream,
    CompletionStream,
    chat_completion,
    chat_logprobs,
    chat_request_from_openai,
    completion_logprobs,
    embed_request_from_openai,
    embedding_list,
    finish_reason,
    generate_request_from_openai,
    model_list,
    model_not_found_error,
    model_object,
    new_completion_id,
    openai_error,
    openai_tool_calls,
    owner_of,
    text_completion,
    unix_time,
)
from power.http.openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from power.http.schemas import ChatRequest, GenerateRequest, parse_request
from power.messages import ToolCall, ToolCallFunction, ToolChoice, ToolChoiceMode

CREATED_AT = "2024-07-22T20:47:51.147561Z"
CREATED = int(datetime(2024, 7, 22, 20, 47, 51, tzinfo=UTC).timestamp())


def parse(cls, body):
    return parse_request(cls, json.dumps(body))


USER = [{"role": "user", "content": "hi"}]

# ---------------------------------------------------------------- requests


def test_chat_request_translation():
    request = parse(
        ChatCompletionRequest,
        {
            "model": "qwen",
            "messages": USER,
            "stream": True,
            "max_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.5,
            "seed": 7,
            "stop": ["a", "b"],
            "frequency_penalty": 0.1,
            "presence_penalty": 0.3,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "logprobs": True,
            "top_logprobs": 2,
            "reasoning_effort": "low",
            "options": {"num_ctx": 16384, "temperature": 0.9, "top_k": 3},
            "keep_alive": "10m",
        },
    )
    native = chat_request_from_openai(request)
    assert isinstance(native, ChatRequest)
    assert native.model == "qwen" and native.stream is True
    assert native.messages == request.messages
    assert native.options == {
        "num_ctx": 16384,
        "temperature": 0.2,  # the standard field wins over the extension
        "top_k": 3,
        "num_predict": 50,
        "top_p": 0.5,
        "seed": 7,
        "stop": ["a", "b"],
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
    }
    assert native.format == "json" and native.think == "low" and native.keep_alive == 600.0
    assert [tool.function.name for tool in native.tools] == ["f"]
    assert (native.logprobs, native.top_logprobs) == (True, 2)


def test_chat_request_defaults_leave_options_to_the_model():
    native = chat_request_from_openai(
        parse(ChatCompletionRequest, {"model": "m", "messages": USER})
    )
    assert native.options == {} and native.stream is False and native.format is None
    assert native.think is None and native.logprobs is False


def test_max_completion_tokens_wins_and_tool_choice_goes_through():
    request = parse(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": USER,
            "max_tokens": 5,
            "max_completion_tokens": 9,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "none",
            "top_logprobs": 4,
        },
    )
    native = chat_request_from_openai(request)
    assert native.options["num_predict"] == 9
    assert native.tool_choice == ToolChoice(ToolChoiceMode.NONE)  # the chat job drops the tools
    assert native.top_logprobs == 0  # only with logprobs: true


def test_completion_request_translation():
    request = parse(
        CompletionRequest,
        {
            "model": "m",
            "prompt": "def f(",
            "suffix": ")",
            "max_tokens": 3,
            "logprobs": 2,
            "stream": True,
        },
    )
    native = generate_request_from_openai(request)
    assert isinstance(native, GenerateRequest)
    assert (native.prompt, native.suffix, native.stream) == ("def f(", ")", True)
    assert native.options == {"num_predict": 3}
    assert (native.logprobs, native.top_logprobs) == (True, 2)
    plain = generate_request_from_openai(parse(CompletionRequest, {"model": "m", "prompt": "x"}))
    assert (plain.logprobs, plain.top_logprobs, plain.raw) == (False, 0, False)


def test_embedding_request_translation():
    request = parse(EmbeddingRequest, {"model": "m", "input": ["a", "b"], "dimensions": 4})
    native = embed_request_from_openai(request)
    assert (native.model, native.input, native.dimensions, native.truncate) == (
        "m",
        ["a", "b"],
        4,
        True,
    )


# ---------------------------------------------------------------- chat answers


def native_chunk(content="", thinking="", tool_calls=None, done=False, **extra):
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": "m", "created_at": CREATED_AT, "message": message, "done": done, **extra}


FINAL = {"done_reason": "stop", "prompt_eval_count": 12, "eval_count": 5}
CALL = ToolCall(
    id="call_abcdefgh", function=ToolCallFunction(name="f", arguments={"city": "Paris"})
)


def translate_all(stream, chunks):
    out = []
    for chunk in chunks:
        out.extend(stream.translate(chunk))
    return out


def test_chat_stream_text():
    stream = ChatCompletionStream("m", completion_id="chatcmpl-1", created=CREATED)
    chunks = translate_all(
        stream,
        [
            native_chunk("Hel"),
            native_chunk(""),
            native_chunk("lo"),
            native_chunk("", done=True, **FINAL),
        ],
    )
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["id"] == "chatcmpl-1" and chunk["created"] == CREATED
        assert (
            chunk["object"] == "chat.completion.chunk"
            and chunk["system_fingerprint"] == "fp_ollama"
        )
        assert "usage" not in chunk
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]


def test_chat_stream_usage_thinking_and_tool_calls():
    stream = ChatCompletionStream("m", include_usage=True)
    assert stream.id.startswith("chatcmpl-")
    chunks = translate_all(
        stream,
        [
            native_chunk(thinking="Let me see."),
            native_chunk("Calling.", thinking=" Use f.", tool_calls=[CALL]),
            native_chunk("", done=True, **FINAL),
        ],
    )
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas[0] == {"role": "assistant", "reasoning": "Let me see."}
    assert deltas[1] == {"reasoning": " Use f."}
    assert deltas[2] == {
        "content": "Calling.",
        "tool_calls": [
            {
                "index": 0,
                "id": "call_abcdefgh",
                "type": "function",
                "function": {"name": "f", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert deltas[3] == {} and chunks[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert deltas[4] is None
    assert chunks[4]["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    assert all(c["usage"] is None for c in chunks[:4])


def test_chat_stream_first_empty_chunk_carries_the_role_and_length_finishes():
    stream = ChatCompletionStream("m")
    first = stream.translate(native_chunk(""))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert stream.translate(native_chunk("")) == []
    last = stream.translate(native_chunk("", done=True, done_reason="length"))
    assert last[-1]["choices"][0]["finish_reason"] == "length"
    assert stream.translate(native_chunk("", done=True)) == []  # finished once


def test_chat_stream_tool_calls_as_native_json_and_error_lines():
    stream = ChatCompletionStream("m")
    native_call = {"id": "call_1", "function": {"index": 0, "name": "g", "arguments": {}}}
    out = stream.translate(native_chunk(tool_calls=[native_call]))
    delta = out[0]["choices"][0]["delta"]
    assert "content" not in delta and delta["tool_calls"][0]["function"]["arguments"] == "{}"
    error = stream.translate({"error": "model crashed"})
    assert error == [
        {"error": {"message": "model crashed", "type": "api_error", "param": None, "code": None}}
    ]


def test_chat_stream_logprobs():
    logprobs = [
        {
            "token": "Hi",
            "logprob": -0.1,
            "bytes": [72, 105],
            "top_logprobs": [{"token": "Hi", "logprob": -0.1}],
        }
    ]
    stream = ChatCompletionStream("m")
    chunk = stream.translate(native_chunk("Hi", logprobs=logprobs))[0]
    ChatCompletionChunk.model_validate(chunk)
    assert chunk["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": None}],
            }
        ]
    }
    assert chat_logprobs(None) is None and chat_logprobs([]) is None


def test_chat_completion_non_streamed():
    native = native_chunk("Paris.", thinking="easy", done=True, **FINAL)
    answer = chat_completion(native, completion_id="chatcmpl-9")
    ChatCompletion.model_validate(answer)
    assert answer["object"] == "chat.completion" and answer["created"] == CREATED
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Paris.", "reasoning": "easy"}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert answer["usage"]["total_tokens"] == 17
    with_call = chat_completion(native_chunk("", tool_calls=[CALL], done=True, **FINAL))
    ChatCompletion.model_validate(with_call)
    assert with_call["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(
        with_call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    ) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        ("load", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reason(reason, calls, expected):
    assert finish_reason(reason, calls) == expected


def test_openai_tool_calls_index_defaults_to_position():
    calls = openai_tool_calls(
        [{"function": {"name": "a"}}, {"function": {"name": "b", "arguments": {"x": 1}}}]
    )
    assert [(c["index"], c["function"]["arguments"]) for c in calls] == [(0, "{}"), (1, '{"x":1}')]


# ---------------------------------------------------------------- completions


def test_completion_stream():
    stream = CompletionStream("m", include_usage=True, created=CREATED)
    assert stream.id.startswith("cmpl-")
    logprobs = [
        {"token": "lo", "logprob": -0.5, "top_logprobs": [{"token": "lo", "logprob": -0.5}]}
    ]
    chunks = translate_all(
        stream,
        [
            {"model": "m", "response": "Hel", "done": False},
            {"model": "m", "response": "lo", "done": False, "logprobs": logprobs},
            {"model": "m", "response": "", "done": True, **FINAL},
        ],
    )
    # OpenAI streams finish_reason null until the end; the SDK's Completion type only allows
    # it on the last chunk (the SDK does not validate streamed chunks strictly).
    Completion.model_validate(chunks[2])
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert texts == ["Hel", "lo", ""]
    assert chunks[1]["choices"][0]["logprobs"] == {
        "tokens": ["lo"],
        "token_logprobs": [-0.5],
        "top_logprobs": [{"lo": -0.5}],
        "text_offset": [3],
    }
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["completion_tokens"] == 5


def test_text_completion_non_streamed():
    answer = text_completion(
        {"model": "m", "created_at": CREATED_AT, "response": "42", "done": True, **FINAL}
    )
    Completion.model_validate(answer)
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"] == "42"
    assert answer["created"] == CREATED and answer["usage"]["prompt_tokens"] == 12


def test_completion_logprobs_offsets():
    entries = [{"token": "ab", "logprob": -1.0}, {"token": "c", "logprob": -2.0}]
    assert completion_logprobs(entries, 10)["text_offset"] == [10, 12]
    assert completion_logprobs(None, 0) is None


# ---------------------------------------------------------------- embeddings, models, errors


def test_embedding_list_float_and_base64():
    vectors = [[0.5, -0.25, 1.0], [0.0, 1.0, 0.0]]
    answer = embedding_list("m", vectors, prompt_tokens=4)
    CreateEmbeddingResponse.model_validate(answer)
    assert answer["data"][1] == {"object": "embedding", "embedding": [0.0, 1.0, 0.0], "index": 1}
    assert answer["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    encoded = embedding_list("m", np.array(vectors, dtype=np.float32), 4, "base64")
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == vectors[0]


def test_models():
    when = datetime(2024, 1, 2, tzinfo=UTC)
    assert model_object("llama3.2:latest", when) == {
        "id": "llama3.2:latest",
        "object": "model",
        "created": int(when.timestamp()),
        "owned_by": "library",
    }
    Model.model_validate(model_object("me/tiny:1b", 1700000000.5))
    listing = model_list([("a:latest", 1.0), ("me/b:latest", 2.0)])
    assert listing["object"] == "list"
    assert [m["owned_by"] for m in listing["data"]] == ["library", "me"]


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("llama3", "library"),
        ("ns/model:tag", "ns"),
        ("registry.ollama.ai/library/llama3:latest", "library"),
        ("127.0.0.1:5000/team/model:v1", "team"),
    ],
)
def test_owner_of(name, owner):
    assert owner_of(name) == owner


def test_errors():
    assert openai_error(400, "bad") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert openai_error(500, "boom")["error"]["type"] == "api_error"
    assert openai_error(503, "busy")["error"]["type"] == "api_error"
    assert openai_error(405, "no")["error"]["type"] == "invalid_request_error"
    assert model_not_found_error("x") == {
        "error": {
            "message": "model 'x' not found",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_ids_and_times():
    assert new_completion_id() != new_completion_id()
    assert new_completion_id("cmpl").startswith("cmpl-")
    assert unix_time(CREATED_AT) == CREATED
    assert abs(unix_time(None) - unix_time("not a time")) <= 1
