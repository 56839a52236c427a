"""Typed requests of the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`),
parsed with the machinery of `schemas`.

Messages become `power.messages.Message`s while parsing. A message's `content` is a string or a
list of blocks: `text` blocks are joined with a newline; `image` blocks (base64 sources) become
the message's images, the field the native chat route uses, so they meet the same 400/501 as
there (URL and file sources are refused: power fetches nothing); an assistant's `tool_use`
blocks become its tool calls (`input` is the arguments object) and its `thinking` block its
thinking (`redacted_thinking` is dropped); a user's `tool_result` blocks become `tool` messages
placed before the rest of that message, with `tool_call_id` = `tool_use_id` and the tool's name
taken from the call they answer. `document` and other blocks are refused with a 400.

`system` is a string or a list of text blocks (joined with a newline). Tools are
`{name, description, input_schema}`; server tools (`web_search_20250305`, `bash_...`: a `type`
other than `custom` and no `input_schema`) are dropped with a logged warning, since power runs
no tools itself. `thinking: {"type": "enabled", "budget_tokens": N}` becomes a think level
(N < 6000: low, < 16000: medium, else high; the budget is not enforced, as in Ollama);
`{"type": "disabled"}` is `think: false`; `output_config.effort` gives the level when
`thinking` is absent. `metadata`, `service_tier`, `cache_control` and the headers
`anthropic-version`/`anthropic-beta` are accepted and ignored.

power's extensions, as on the OpenAI routes: `options` (any Ollama option, `num_ctx`
included) and `keep_alive`. Anthropic's SDK has no `temperature` parameter any more: it goes
in `extra_body` (the JSON body) like `top_k`, and is read here.
"""

from __future__ import annotations

import logging
from typing import Any

from power.http.openai_schemas import resolve_tool_names
from power.http.schemas import (
    THINK_LEVELS,
    FieldError,
    RequestError,
    decode_base64_image,
    field,
    get_field,
    parse_keep_alive_field,
    parse_options,
    parse_tool_choice,
    request_class,
    require_model,
)
from power.messages import Message, Tool, ToolCall, ToolCallFunction, ToolChoice, ToolFunction

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- content blocks


def _block_type(block: Any, path: str) -> str:
    if not isinstance(block, dict):
        raise FieldError("a content block object", block, path)
    kind = block.get("type")
    if not isinstance(kind, str) or not kind:
        raise FieldError("a block type string", kind, f"{path}.type")
    return kind


def _image(block: dict[str, Any], path: str) -> bytes:
    source = block.get("source")
    if not isinstance(source, dict):
        raise FieldError("an image source object", source, f"{path}.source")
    kind = source.get("type")
    if kind != "base64":
        raise RequestError(
            400,
            f"{path}.source: image source type {kind!r} is not supported, "
            "send the image as base64 data",
        )
    try:
        return decode_base64_image(source.get("data"))
    except FieldError as err:
        raise err.at(f"{path}.source.data") from None


def _text_and_images(blocks: Any, path: str) -> tuple[str, list[bytes]]:
    """The text (blocks joined by newlines) and images of a string or a list of text/image
    blocks (a tool result's content, a system prompt)."""
    if isinstance(blocks, str):
        return blocks, []
    if not isinstance(blocks, list):
        raise FieldError("a string or an array of content blocks", blocks, path)
    texts, images = [], []
    for index, block in enumerate(blocks):
        where = f"{path}[{index}]"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(get_field(block, "text", str, ""))
        elif kind == "image":
            images.append(_image(block, where))
        else:
            raise RequestError(400, f"{where}: unsupported content block type {kind!r} here")
    return "\n".join(texts), images


def _tool_use(block: dict[str, Any], index: int, path: str) -> ToolCall:
    call_id = get_field(block, "id", str, "")
    name = get_field(block, "name", str, "")
    if not call_id or not name:
        raise RequestError(400, f"{path}: a tool_use block needs an id and a name")
    arguments = block.get("input")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise FieldError("an object", arguments, f"{path}.input")
    return ToolCall(
        id=call_id, function=ToolCallFunction(name=name, arguments=arguments, index=index)
    )


def _tool_result(block: dict[str, Any], path: str) -> Message:
    content, images = _text_and_images(block.get("content") or "", f"{path}.content")
    return Message(
        role="tool",
        content=content,
        images=images,
        tool_call_id=get_field(block, "tool_use_id", str, ""),
    )


def parse_anthropic_message(value: Any, path: str = "") -> list[Message]:
    """One Anthropic message as power messages: its tool results first, then the rest."""
    if not isinstance(value, dict):
        raise FieldError("an object", value, path)
    role = value.get("role")
    if role not in ("user", "assistant"):
        raise FieldError('"user" or "assistant"', role, f"{path}.role")
    content = value.get("content")
    if isinstance(content, str):
        return [Message(role=role, content=content)]
    if not isinstance(content, list):
        raise FieldError("a string or an array of content blocks", content, f"{path}.content")
    texts: list[str] = []
    images: list[bytes] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    thinking = ""
    for index, block in enumerate(content):
        where = f"{path}.content[{index}]"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(get_field(block, "text", str, ""))
        elif kind == "image":
            images.append(_image(block, where))
        elif kind == "tool_use":
            calls.append(_tool_use(block, len(calls), where))
        elif kind == "tool_result":
            results.append(_tool_result(block, where))
        elif kind == "thinking":
            thinking += get_field(block, "thinking", str, "")
        elif kind == "redacted_thinking":
            continue
        else:
            raise RequestError(400, f"{where}: unsupported content block type {kind!r}")
    out = list(results)
    if texts or images or calls or thinking or not results:
        out.append(
            Message(
                role=role,
                content="\n".join(texts),
                images=images,
                thinking=thinking,
                tool_calls=calls,
            )
        )
    return out


def _prefixed(error: RequestError, key: str) -> RequestError:
    return RequestError(error.status, key + error.message)


def parse_anthropic_messages(value: Any) -> list[Message]:
    if not isinstance(value, list):
        raise FieldError("an array", value)
    out: list[Message] = []
    for index, item in enumerate(value):
        try:
            out += parse_anthropic_message(item, f"[{index}]")
        except RequestError as err:
            raise _prefixed(err, "messages") from None
    return out


def parse_system(value: Any) -> str:
    """`system`: a string or a list of text blocks."""
    try:
        text, images = _text_and_images(value, "")
    except RequestError as err:
        raise _prefixed(err, "system") from None
    if images:
        raise RequestError(400, "system: images are not allowed in the system prompt")
    return text


# ---------------------------------------------------------------- tools and thinking


def parse_anthropic_tool(value: Any) -> Tool | None:
    """A client tool `{name, description, input_schema}`; None for a server tool."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("a tool name string", name, ".name")
    kind = get_field(value, "type", str, "custom")
    schema = value.get("input_schema")
    if kind != "custom" and schema is None:
        log.warning(
            "dropping Anthropic server tool %r (%s): power runs no tools itself", name, kind
        )
        return None
    if schema is None:
        schema = {}
    if not isinstance(schema, dict):
        raise FieldError("a JSON schema object", schema, ".input_schema")
    return Tool(
        function=ToolFunction(
            name=name, description=get_field(value, "description", str, ""), parameters=schema
        )
    )


def parse_anthropic_tools(value: Any) -> list[Tool]:
    if not isinstance(value, list):
        raise FieldError("an array", value)
    tools = []
    for index, item in enumerate(value):
        try:
            tool = parse_anthropic_tool(item)
        except FieldError as err:
            raise err.at(f"[{index}]") from None
        if tool is not None:
            tools.append(tool)
    return tools


def think_from_budget(budget_tokens: int | None) -> str:
    """A thinking budget as power's think level."""
    if budget_tokens is None or budget_tokens < 6000:
        return "low"
    return "medium" if budget_tokens < 16000 else "high"


def parse_thinking(value: Any) -> bool | str:
    """`thinking`: `{"type": "enabled", "budget_tokens"}` → a level, `"disabled"` → False,
    `"adaptive"` → True (the model's own measure)."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    kind = get_field(value, "type", str, "")
    if kind == "enabled":
        return think_from_budget(get_field(value, "budget_tokens", int, None))
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return True
    raise RequestError(400, f'thinking.type must be "enabled" or "disabled", not {kind!r}')


def parse_output_config(value: Any) -> str | None:
    """`output_config: {"effort": ...}` → a think level (xhigh reads as max)."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    effort = (get_field(value, "effort", str, "") or "").strip().lower()
    effort = {"xhigh": "max"}.get(effort, effort)
    if effort and effort not in THINK_LEVELS:
        raise RequestError(400, f"invalid output_config.effort {effort!r}")
    return effort or None


def parse_stop_sequences(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise FieldError("an array of strings", value)


# ---------------------------------------------------------------- requests


@request_class
class CountTokensRequest:
    """`POST /v1/messages/count_tokens`: the prompt part of a messages request."""

    model: str = field("")
    messages: list[Message] = field(factory=list, parse=parse_anthropic_messages)
    system: str = field("", parse=parse_system)
    tools: list[Tool] = field(factory=list, parse=parse_anthropic_tools)
    tool_choice: ToolChoice = field(factory=ToolChoice, parse=parse_tool_choice)
    think: bool | str | None = field(None, key="thinking", parse=parse_thinking)
    effort: str | None = field(None, key="output_config", parse=parse_output_config)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)

    def validate(self) -> None:
        require_model(self.model)
        if not self.messages:
            raise RequestError(400, "messages: at least one message is required")
        if self.think is None and self.effort:
            self.think = self.effort
        resolve_tool_names(self.messages)


@request_class
class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`."""

    max_tokens: int | None = field(None)
    stop_sequences: list[str] = field(factory=list, parse=parse_stop_sequences)
    temperature: float | None = field(None)
    top_p: float | None = field(None)
    top_k: int | None = field(None)
    stream: bool = field(False)

    def validate(self) -> None:
        super().validate()
        if self.max_tokens is None:
            raise RequestError(400, "max_tokens: Field required")
        if self.max_tokens < 1:
            raise RequestError(400, "max_tokens: must be greater than or equal to 1")
