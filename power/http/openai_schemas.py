"""Typed requests of the OpenAI-compatible routes, parsed with the machinery of `schemas`.

Messages are turned into `power.messages.Message` while parsing: content parts are joined
(text parts with a newline between them), `image_url` data URIs become image bytes (http(s) URLs
are refused with a 400: power fetches nothing), assistant `tool_calls` with JSON-string
arguments get dict arguments, `tool` messages get `tool_name` from `name` or from the assistant
call with the same `tool_call_id`, and the `developer` role becomes `system`.

power's extensions, absent from OpenAI's API: `options` (any Ollama option, `num_ctx`
included), `keep_alive`, `think` (chat) and `truncate` (embeddings).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from power.http.schemas import (
    THINK_LEVELS,
    FieldError,
    RequestError,
    check_dimensions,
    check_top_logprobs,
    field,
    get_field,
    list_of,
    parse_keep_alive_field,
    parse_options,
    parse_think,
    parse_tool,
    parse_tool_call,
    parse_tool_choice,
    request_class,
    require_model,
)
from power.messages import Message, Tool, ToolChoice

_TEXT_PART_TYPES = ("text", "input_text", "output_text")


def decode_image_url(url: str) -> bytes:
    """A `data:[mime];base64,...` URI to bytes; remote URLs and other strings are refused."""
    if url.startswith(("http://", "https://")):
        raise RequestError(
            400, "image URLs are not supported, send the image as a base64 data URI instead"
        )
    if not url.startswith("data:") or ";base64," not in url:
        raise RequestError(400, "invalid image input: expected a base64 data URI")
    payload = url.split(";base64,", 1)[1]
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "invalid image input: the data URI is not valid base64") from None


def _content_parts(parts: list[Any]) -> tuple[str, list[bytes]]:
    texts: list[str] = []
    images: list[bytes] = []
    for index, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise FieldError("a content part object", part, f"[{index}]")
        kind = part.get("type")
        if kind in _TEXT_PART_TYPES:
            text = part.get("text")
            if not isinstance(text, str):
                raise FieldError("a string", text, f"[{index}].text")
            texts.append(text)
        elif kind == "refusal":
            texts.append(get_field(part, "refusal", str, ""))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise FieldError("a URL string", url, f"[{index}].image_url.url")
            images.append(decode_image_url(url))
        else:
            raise RequestError(400, f"unsupported content part type {kind!r}")
    return "\n".join(texts), images


def parse_openai_message(value: Any) -> Message:
    """One OpenAI chat message as a power `Message` (tool names are resolved later)."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    role = value.get("role")
    if not isinstance(role, str) or not role:
        raise FieldError("a role string", role, ".role")
    role = {"developer": "system", "function": "tool"}.get(role.lower(), role.lower())
    content = value.get("content")
    images: list[bytes] = []
    if content is None:
        content = ""
    elif isinstance(content, list):
        try:
            content, images = _content_parts(content)
        except FieldError as err:
            raise err.at(".content") from None
    elif not isinstance(content, str):
        raise FieldError("a string or an array of content parts", content, ".content")
    tool_calls = []
    for index, call in enumerate(get_field(value, "tool_calls", list[Any], [])):
        try:
            tool_calls.append(parse_tool_call(call, index))
        except FieldError as err:
            raise err.at(f".tool_calls[{index}]") from None
    thinking = get_field(value, "reasoning", str, "") or get_field(
        value, "reasoning_content", str, ""
    )
    return Message(
        role=role,
        content=content,
        images=images,
        thinking=thinking,
        tool_calls=tool_calls,
        tool_name=get_field(value, "name", str, "") if role == "tool" else "",
        tool_call_id=get_field(value, "tool_call_id", str, ""),
    )


def resolve_tool_names(messages: list[Message]) -> None:
    """Give each tool message without a name the name of the call it answers (last one wins)."""
    for position, message in enumerate(messages):
        if message.role != "tool" or message.tool_name or not message.tool_call_id:
            continue
        for earlier in reversed(messages[:position]):
            names = [c.function.name for c in earlier.tool_calls if c.id == message.tool_call_id]
            if names:
                message.tool_name = names[-1]
                break


def parse_stop(value: Any) -> list[str]:
    """`stop`: a string or an array of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise FieldError("a string or an array of strings", value)


def parse_stream_options(value: Any) -> bool:
    """`stream_options` → whether to send a usage chunk."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    return get_field(value, "include_usage", bool, False)


def parse_response_format(value: Any) -> str | dict[str, Any] | None:
    """`response_format` → a native `format`: None, "json" or a JSON schema."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    kind = str(value.get("type", "")).strip().lower()
    if kind in ("", "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise FieldError("a JSON schema object", schema, ".json_schema.schema")
        return schema
    raise RequestError(
        400, f"invalid response_format type {kind!r}: expected text, json_object or json_schema"
    )


def parse_reasoning(value: Any) -> str | None:
    """`reasoning: {"effort": ...}` → the effort."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    return get_field(value, "effort", str, None)


_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "xhigh": "max",
    "ultra": "max",  # a tier some clients add above OpenAI's (Ollama clamps it too)
    **{level: level for level in THINK_LEVELS},
}


def think_from_reasoning_effort(effort: str | None) -> bool | str | None:
    """OpenAI's reasoning effort as a native `think` value (None: the model's default)."""
    if not effort:
        return None
    try:
        return _EFFORT_TO_THINK[effort.lower()]
    except KeyError:
        choices = ", ".join(repr(name) for name in _EFFORT_TO_THINK)
        raise RequestError(
            400, f"invalid reasoning effort {effort!r}: expected one of {choices}"
        ) from None


def parse_completion_prompt(value: Any) -> str:
    """`/v1/completions` prompt: a string, or an array holding one string."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise RequestError(
        400, "prompt must be a string (arrays of prompts and tokens are not supported)"
    )


def parse_embedding_input(value: Any) -> list[str]:
    """`/v1/embeddings` input: a string (an empty one is embedded too) or a non-empty array of
    strings; token arrays are not supported."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise RequestError(400, "invalid input")


def parse_encoding_format(value: Any) -> str:
    if isinstance(value, str) and value.lower() in ("float", "base64"):
        return value.lower()
    raise RequestError(
        400,
        f"Invalid value for 'encoding_format' = {value}. Supported values: ['float', 'base64'].",
    )


def check_n(n: int | None) -> None:
    if n is not None and n != 1:
        raise RequestError(400, "n must be 1: power generates one choice per request")


@request_class
class ChatCompletionRequest:
    """`POST /v1/chat/completions`. After `validate()`, `think` holds the effective value from
    `reasoning.effort`, `reasoning_effort` or power's `think` extension (in that order)."""

    model: str = field("")
    messages: list[Message] = field(factory=list, parse=list_of(parse_openai_message))
    stream: bool = field(False)
    include_usage: bool = field(False, key="stream_options", parse=parse_stream_options)
    max_tokens: int | None = field(None)
    max_completion_tokens: int | None = field(None)
    seed: int | None = field(None)
    stop: list[str] | None = field(None, parse=parse_stop)
    temperature: float | None = field(None)
    top_p: float | None = field(None)
    frequency_penalty: float | None = field(None)
    presence_penalty: float | None = field(None)
    format: str | dict[str, Any] | None = field(
        None, key="response_format", parse=parse_response_format
    )
    tools: list[Tool] = field(factory=list, parse=list_of(parse_tool))
    tool_choice: ToolChoice = field(factory=ToolChoice, parse=parse_tool_choice)
    parallel_tool_calls: bool = field(True)
    logprobs: bool = field(False)
    top_logprobs: int = field(0)
    reasoning_effort: str | None = field(None)
    reasoning: str | None = field(None, parse=parse_reasoning)
    think: bool | str | None = field(None, parse=parse_think)
    n: int | None = field(None)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)

    def validate(self) -> None:
        require_model(self.model)
        if not self.messages:
            raise RequestError(400, "[] is too short - 'messages'")
        check_top_logprobs(self.top_logprobs)
        check_n(self.n)
        effort = self.reasoning or self.reasoning_effort
        if effort:
            self.think = think_from_reasoning_effort(effort)
        resolve_tool_names(self.messages)


@request_class
class CompletionRequest:
    """`POST /v1/completions` (one string prompt; `logprobs` is the number of alternatives)."""

    model: str = field("")
    prompt: str = field("", parse=parse_completion_prompt)
    suffix: str = field("")
    stream: bool = field(False)
    include_usage: bool = field(False, key="stream_options", parse=parse_stream_options)
    max_tokens: int | None = field(None)
    seed: int | None = field(None)
    stop: list[str] | None = field(None, parse=parse_stop)
    temperature: float | None = field(None)
    top_p: float | None = field(None)
    frequency_penalty: float | None = field(None)
    presence_penalty: float | None = field(None)
    logprobs: int | None = field(None)
    echo: bool = field(False)
    n: int | None = field(None)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)

    def validate(self) -> None:
        require_model(self.model)
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise RequestError(400, "logprobs must be between 0 and 20")
        if self.echo:
            raise RequestError(400, "echo is not supported")
        check_n(self.n)


@request_class
class EmbeddingRequest:
    """`POST /v1/embeddings`."""

    model: str = field("")
    input: list[str] | None = field(None, parse=parse_embedding_input)
    encoding_format: str = field("float", parse=parse_encoding_format)
    dimensions: int | None = field(None)
    truncate: bool = field(True)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)

    def validate(self) -> None:
        require_model(self.model)
        if self.input is None:
            raise RequestError(400, "invalid input")
        check_dimensions(self.dimensions)
