"""OpenAI-compatible routes as pure translations to and from the native API.

Requests: `chat_request_from_openai`, `generate_request_from_openai` and
`embed_request_from_openai` turn the parsed OpenAI requests (`openai_schemas`) into the native
requests (`schemas`), so one code path serves both APIs. power's `options` extension is applied
first; the standard OpenAI fields (max_tokens, temperature, ...) override it. Unlike Ollama,
power does not force temperature 1 and top_p 1 when the request omits them: the Modelfile's
values (or power's defaults) apply, as on the native routes.

Responses take native chunks, the JSON objects the native routes write:
`{"model", "created_at", "message": {"role", "content", "thinking"?, "tool_calls"?},
"response"?, "logprobs"?, "done", "done_reason"?, "prompt_eval_count"?, "eval_count"?}` or a
native `{"error": ...}` line. Tool calls may be native JSON (`schemas.tool_call_to_json`) or
`ToolCall` objects. `ChatCompletionStream` / `CompletionStream` turn a stream of native chunks
into OpenAI chunk objects (the route frames each with `streaming.sse_event` and ends with
`streaming.SSE_DONE`); `chat_completion` / `text_completion` build the non-streamed answers.

Errors follow Ollama's mapping of status to `type` (400 `invalid_request_error`, 404
`not_found_error`, other 4xx `invalid_request_error`, 5xx `api_error`); power adds OpenAI's
`code: "model_not_found"` and `param: "model"` for unknown models (`model_not_found_error`).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs
import numpy as np

from power.http.openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from power.http.schemas import ChatRequest, EmbedRequest, GenerateRequest, tool_call_to_json
from power.http.streaming import dumps
from power.messages import ToolCall
from power.options import parse_options

SYSTEM_FINGERPRINT = "fp_ollama"

# ---------------------------------------------------------------- requests


def _sampling_options(
    request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> dict[str, Any]:
    options = dict(request.options)
    standard = {
        "num_predict": max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": request.stop,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
    }
    options.update(parse_options({k: v for k, v in standard.items() if v is not None}))
    return options


def chat_request_from_openai(request: ChatCompletionRequest) -> ChatRequest:
    """The native chat request equivalent to a validated OpenAI chat request.

    `tool_choice` goes through as it is (with `parallel_tool_calls: false`, one call at most):
    the chat job enforces it, which Ollama does not.
    """
    max_tokens = (
        request.max_completion_tokens
        if request.max_completion_tokens is not None
        else request.max_tokens
    )
    return ChatRequest(
        model=request.model,
        messages=request.messages,
        tools=request.tools,
        tool_choice=attrs.evolve(
            request.tool_choice,
            parallel=request.tool_choice.parallel and request.parallel_tool_calls,
        ),
        format=request.format,
        stream=request.stream,
        keep_alive=request.keep_alive,
        options=_sampling_options(request, max_tokens),
        think=request.think,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs if request.logprobs else 0,
    )


def generate_request_from_openai(request: CompletionRequest) -> GenerateRequest:
    """The native generate request for `/v1/completions` (templated, like Ollama's; with suffix)."""
    return GenerateRequest(
        model=request.model,
        prompt=request.prompt,
        suffix=request.suffix,
        stream=request.stream,
        keep_alive=request.keep_alive,
        options=_sampling_options(request, request.max_tokens),
        logprobs=request.logprobs is not None,
        top_logprobs=request.logprobs or 0,
    )


def embed_request_from_openai(request: EmbeddingRequest) -> EmbedRequest:
    return EmbedRequest(
        model=request.model,
        input=list(request.input or []),
        truncate=request.truncate,
        dimensions=request.dimensions,
        keep_alive=request.keep_alive,
        options=request.options,
    )


# ---------------------------------------------------------------- shared pieces


def new_completion_id(prefix: str = "chatcmpl") -> str:
    """`chatcmpl-<n>` (chat) or `cmpl-<n>` (completions)."""
    return f"{prefix}-{secrets.randbelow(1_000_000_000)}"


def unix_time(created_at: str | None) -> int:
    """Seconds since the epoch of a native `created_at` (now if absent or unreadable)."""
    if created_at:
        try:
            return int(datetime.fromisoformat(created_at).timestamp())
        except ValueError:
            pass
    return int(time.time())


def usage(native: dict[str, Any]) -> dict[str, int]:
    prompt = int(native.get("prompt_eval_count") or 0)
    completion = int(native.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_tool_calls(calls: Iterable[ToolCall | dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's shape: arguments as a JSON string, `index` at the top."""
    out = []
    for call in calls:
        native = tool_call_to_json(call) if isinstance(call, ToolCall) else call
        function = native.get("function", {})
        out.append(
            {
                "index": function.get("index", len(out)),
                "id": native.get("id", ""),
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": dumps(function.get("arguments") or {}),
                },
            }
        )
    return out


def _token_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": entry.get("token", ""),
        "logprob": entry.get("logprob", 0.0),
        "bytes": entry.get("bytes"),
    }


def chat_logprobs(native: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Native logprobs → OpenAI's `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
    if not native:
        return None
    return {
        "content": [
            {
                **_token_logprob(entry),
                "top_logprobs": [_token_logprob(top) for top in entry.get("top_logprobs") or []],
            }
            for entry in native
        ]
    }


def completion_logprobs(native: list[dict[str, Any]] | None, text_offset: int) -> dict | None:
    """Native logprobs → the legacy completions shape (tokens, token_logprobs, top_logprobs,
    text_offset), offsets counted in characters from `text_offset`."""
    if not native:
        return None
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for entry in native:
        token = entry.get("token", "")
        tokens.append(token)
        token_logprobs.append(entry.get("logprob", 0.0))
        tops.append(
            {
                top.get("token", ""): top.get("logprob", 0.0)
                for top in entry.get("top_logprobs") or []
            }
        )
        offsets.append(text_offset)
        text_offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def finish_reason(done_reason: str | None, sent_tool_calls: bool) -> str:
    """stop | length | tool_calls; load/unload and unknown reasons read as stop."""
    if done_reason == "length":
        return "length"
    return "tool_calls" if sent_tool_calls else "stop"


# ---------------------------------------------------------------- chat


class _OpenAIStream:
    """What both streamed answer translators keep: the model, the id, the creation time."""

    id_prefix = "chatcmpl"

    def __init__(
        self,
        model: str,
        *,
        include_usage: bool = False,
        completion_id: str | None = None,
        created: int | None = None,
    ) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = completion_id or new_completion_id(self.id_prefix)
        self.created = created if created is not None else int(time.time())
        self.sent_role = False
        self.sent_tool_calls = False
        self.text_offset = 0
        self.finished = False


class ChatCompletionStream(_OpenAIStream):
    """Turns native chat chunks into `chat.completion.chunk` objects, in order.

    The first chunk carries `delta.role = "assistant"`; thinking goes to `delta.reasoning`
    (Ollama's field), in a chunk of its own when a native chunk also has content or tool calls;
    the native final chunk yields a chunk with an empty delta and `finish_reason`, then (with
    `include_usage`) a chunk with no choices and the usage. With `include_usage` every other
    chunk has `"usage": null`, as OpenAI sends. A native error line becomes an error object.
    """

    def _chunk(self, delta: dict[str, Any], reason: str | None, logprobs: Any) -> dict:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _delta(self) -> dict[str, Any]:
        if self.sent_role:
            return {}
        self.sent_role = True
        return {"role": "assistant"}

    def translate(self, native: dict[str, Any]) -> list[dict[str, Any]]:
        """OpenAI chunks for one native chunk (possibly none, for an empty middle chunk)."""
        if "error" in native:
            return [openai_error(int(native.get("status") or 500), str(native["error"]))]
        message = native.get("message") or {}
        content = message.get("content") or ""
        thinking = message.get("thinking") or ""
        tool_calls = openai_tool_calls(message.get("tool_calls") or [])
        logprobs = chat_logprobs(native.get("logprobs"))
        out = []
        if thinking:
            out.append(self._chunk({**self._delta(), "reasoning": thinking}, None, logprobs))
            logprobs = None
        if content or tool_calls or (not out and (logprobs or not self.sent_role)):
            delta = self._delta()
            if content or not tool_calls:
                delta["content"] = content
            if tool_calls:
                delta["tool_calls"] = tool_calls
                self.sent_tool_calls = True
            out.append(self._chunk(delta, None, logprobs))
        if native.get("done") and not self.finished:
            self.finished = True
            reason = finish_reason(native.get("done_reason"), self.sent_tool_calls)
            out.append(self._chunk({}, reason, None))
            if self.include_usage:
                out.append(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": SYSTEM_FINGERPRINT,
                        "choices": [],
                        "usage": usage(native),
                    }
                )
        return out


def chat_completion(
    native: dict[str, Any], *, completion_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A `chat.completion` object from a native non-streamed chat answer."""
    message = native.get("message") or {}
    tool_calls = openai_tool_calls(message.get("tool_calls") or [])
    out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    return {
        "id": completion_id or new_completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": created if created is not None else unix_time(native.get("created_at")),
        "model": native.get("model", ""),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": out_message,
                "logprobs": chat_logprobs(native.get("logprobs")),
                "finish_reason": finish_reason(native.get("done_reason"), bool(tool_calls)),
            }
        ],
        "usage": usage(native),
    }


# ---------------------------------------------------------------- completions


class CompletionStream(_OpenAIStream):
    """Turns native generate chunks into streamed `text_completion` objects (see the chat one)."""

    id_prefix = "cmpl"

    def _chunk(self, text: str, reason: str | None, logprobs: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def translate(self, native: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in native:
            return [openai_error(int(native.get("status") or 500), str(native["error"]))]
        text = native.get("response") or ""
        logprobs = completion_logprobs(native.get("logprobs"), self.text_offset)
        self.text_offset += len(text)
        out = []
        done = bool(native.get("done")) and not self.finished
        if text or logprobs:
            out.append(self._chunk(text, None, logprobs))
        if done:
            self.finished = True
            out.append(self._chunk("", finish_reason(native.get("done_reason"), False), None))
            if self.include_usage:
                final = self._chunk("", None, None)
                final["choices"] = []
                final["usage"] = usage(native)
                out.append(final)
        return out


def text_completion(
    native: dict[str, Any], *, completion_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A `text_completion` object from a native non-streamed generate answer."""
    return {
        "id": completion_id or new_completion_id("cmpl"),
        "object": "text_completion",
        "created": created if created is not None else unix_time(native.get("created_at")),
        "model": native.get("model", ""),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "text": native.get("response") or "",
                "index": 0,
                "logprobs": completion_logprobs(native.get("logprobs"), 0),
                "finish_reason": finish_reason(native.get("done_reason"), False),
            }
        ],
        "usage": usage(native),
    }


# ---------------------------------------------------------------- embeddings and models


def encode_embedding(vector: Any, encoding_format: str) -> list[float] | str:
    """A vector as floats, or as base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def embedding_list(
    model: str, embeddings: Iterable[Any], prompt_tokens: int, encoding_format: str = "float"
) -> dict[str, Any]:
    """The `/v1/embeddings` answer (vectors already truncated to `dimensions` by the caller)."""
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "embedding": encode_embedding(vector, encoding_format),
                "index": i,
            }
            for i, vector in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def owner_of(name: str) -> str:
    """The namespace of `[host/][namespace/]model[:tag]` (`library` when there is none)."""
    parts = name.split("/")
    if len(parts) >= 3:
        return parts[-2]
    if len(parts) == 2:
        return parts[0]
    return "library"


def model_object(name: str, modified_at: datetime | float) -> dict[str, Any]:
    """One `/v1/models` entry; `created` is the model's modification time."""
    created = modified_at.timestamp() if isinstance(modified_at, datetime) else modified_at
    return {"id": name, "object": "model", "created": int(created), "owned_by": owner_of(name)}


def model_list(models: Iterable[tuple[str, datetime | float]]) -> dict[str, Any]:
    """The `/v1/models` answer from (name, modified_at) pairs."""
    return {"object": "list", "data": [model_object(name, when) for name, when in models]}


# ---------------------------------------------------------------- errors


def error_type(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error body `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def model_not_found_error(name: str) -> dict[str, Any]:
    """A 404 body for an unknown model, with Ollama's message and OpenAI's code."""
    return openai_error(404, f"model '{name}' not found", param="model", code="model_not_found")
