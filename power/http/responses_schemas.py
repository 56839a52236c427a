"""Typed requests of OpenAI's Responses API (`POST /v1/responses`), parsed with the machinery
of `schemas`.

`input` is a string (one user message) or a list of items, turned into `power.messages.Message`s
while parsing:
- a message (`{"type": "message"}` or just a `role`): `user`, `system`, `developer` (read as
  system) or `assistant`, whose `content` is a string or parts: `input_text`/`output_text`/
  `text` (joined with a newline), `refusal`, `input_image` with a base64 data URI in `image_url`
  (the native `images` field: the same 400/501 as the chat routes; URLs and `file_id`s are
  refused, as files are);
- `function_call` (`call_id`, `name`, `arguments` as a JSON string): a tool call of the
  assistant message just before it, or of a new one;
- `function_call_output` (`call_id`, `output` as a string or text parts): a `tool` message
  whose tool name is that of the call it answers;
- `reasoning` (its `summary` texts, else its `reasoning_text` content): the thinking of the
  next assistant message.

Stateless, like Ollama: `previous_response_id`, `conversation`, `item_reference` items and
`background` answer a 400 that says so. Tools are function tools only (`{"type": "function",
"name", "description", "parameters"}`; the chat form with `function` is accepted too).
`text.format` (`json_object`, `json_schema`) is the native `format`; `reasoning.effort` is a
think level (as on /v1/chat/completions). Accepted and ignored: `store` (nothing is stored),
`include`, `truncation`, `user`, `service_tier`, `prompt_cache_key`, `safety_identifier`.
power's extensions: `options`, `keep_alive`, `think`.
"""

from __future__ import annotations

from typing import Any

from power.http.openai_schemas import (
    decode_image_url,
    parse_reasoning,
    resolve_tool_names,
    think_from_reasoning_effort,
)
from power.http.schemas import (
    FieldError,
    RequestError,
    field,
    get_field,
    parse_arguments,
    parse_keep_alive_field,
    parse_options,
    parse_think,
    parse_tool,
    parse_tool_choice,
    request_class,
    require_model,
)
from power.messages import Message, Tool, ToolCall, ToolCallFunction, ToolChoice, ToolFunction

_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def _parts(value: Any, path: str) -> tuple[str, list[bytes]]:
    """Text (parts joined by newlines) and images of a string or a list of content parts."""
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise FieldError("a string or an array of content parts", value, path)
    texts: list[str] = []
    images: list[bytes] = []
    for index, part in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(part, dict):
            raise FieldError("a content part object", part, where)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            texts.append(get_field(part, "text", str, ""))
        elif kind == "refusal":
            texts.append(get_field(part, "refusal", str, ""))
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise RequestError(
                    400, f"input{where}: file_id images are not supported, send a data URI"
                )
            images.append(decode_image_url(url))
        elif kind == "input_file":
            raise RequestError(400, f"input{where}: file inputs are not supported")
        else:
            raise RequestError(400, f"input{where}: unsupported content part type {kind!r}")
    return "\n".join(texts), images


def _reasoning_text(item: dict[str, Any]) -> str:
    for key, part_type in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [
                p.get("text")
                for p in parts
                if isinstance(p, dict)
                and p.get("type") == part_type
                and isinstance(p.get("text"), str)
            ]
            if texts:
                return "\n".join(texts)
    return ""


class _Conversation:
    """Builds the messages of an `input` list, item by item."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.thinking = ""  # from a reasoning item, for the next assistant message

    def message(self, item: dict[str, Any], path: str) -> None:
        role = _ROLES.get(str(item.get("role", "")).lower())
        if role is None:
            raise FieldError(
                '"user", "system", "developer" or "assistant"', item.get("role"), ".role"
            )
        content, images = _parts(item.get("content") or "", f"{path}.content")
        message = Message(role=role, content=content, images=images)
        if role == "assistant":
            message.thinking, self.thinking = self.thinking, ""
        self.messages.append(message)

    def function_call(self, item: dict[str, Any], path: str) -> None:
        name = get_field(item, "name", str, "")
        if not name:
            raise RequestError(400, f"input{path}: a function_call needs a name")
        try:
            arguments = parse_arguments(item.get("arguments") or {})
        except FieldError as err:
            raise err.at(".arguments") from None
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant":
            last = Message(role="assistant")
            self.messages.append(last)
        if self.thinking:
            last.thinking, self.thinking = self.thinking, ""
        call_id = get_field(item, "call_id", str, "") or get_field(item, "id", str, "")
        last.tool_calls.append(
            ToolCall(
                id=call_id,
                function=ToolCallFunction(
                    name=name, arguments=arguments, index=len(last.tool_calls)
                ),
            )
        )

    def function_call_output(self, item: dict[str, Any], path: str) -> None:
        content, images = _parts(item.get("output") or "", f"{path}.output")
        self.messages.append(
            Message(
                role="tool",
                content=content,
                images=images,
                tool_call_id=get_field(item, "call_id", str, ""),
            )
        )

    def finish(self) -> list[Message]:
        if self.thinking:
            self.messages.append(Message(role="assistant", thinking=self.thinking))
        resolve_tool_names(self.messages)
        return self.messages


def parse_responses_input(value: Any) -> list[Message]:
    """`input`: a string (one user message) or a list of items (see the module docstring)."""
    if isinstance(value, str):
        return [Message(role="user", content=value)] if value else []
    if not isinstance(value, list):
        raise FieldError("a string or an array of input items", value)
    conversation = _Conversation()
    for index, item in enumerate(value):
        path = f"[{index}]"
        if not isinstance(item, dict):
            raise FieldError("an input item object", item, path)
        kind = item.get("type") or ("message" if "role" in item else "")
        try:
            if kind == "message":
                conversation.message(item, path)
            elif kind == "function_call":
                conversation.function_call(item, path)
            elif kind == "function_call_output":
                conversation.function_call_output(item, path)
            elif kind == "reasoning":
                conversation.thinking = _reasoning_text(item)
            elif kind == "item_reference":
                raise RequestError(
                    400, f"input{path}: item_reference needs stored responses; power is stateless"
                )
            else:
                raise RequestError(400, f"input{path}: unsupported input item type {kind!r}")
        except FieldError as err:
            raise err.at(path) from None
    return conversation.finish()


def parse_responses_tool(value: Any) -> Tool:
    """A function tool `{"type": "function", "name", "description", "parameters"}`."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    kind = value.get("type", "function")
    if kind != "function":
        raise RequestError(
            400, f"tool type {kind!r} is not supported: power serves function tools only"
        )
    if isinstance(value.get("function"), dict):
        return parse_tool(value)
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("a tool name string", name, ".name")
    return Tool(
        function=ToolFunction(
            name=name,
            description=get_field(value, "description", str, ""),
            parameters=get_field(value, "parameters", dict[str, Any], {}),
        )
    )


def parse_responses_tools(value: Any) -> list[Tool]:
    if not isinstance(value, list):
        raise FieldError("an array", value)
    tools = []
    for index, item in enumerate(value):
        try:
            tools.append(parse_responses_tool(item))
        except FieldError as err:
            raise err.at(f"[{index}]") from None
    return tools


def parse_text_format(value: Any) -> dict[str, Any]:
    """`text`: `{"format": {"type": "text" | "json_object" | "json_schema", ...}}` → the
    format object (type text when absent)."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    fmt = value.get("format")
    if fmt is None:
        return {"type": "text"}
    if not isinstance(fmt, dict):
        raise FieldError("an object", fmt, ".format")
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise RequestError(
            400, f"invalid text.format.type {kind!r}: expected text, json_object or json_schema"
        )
    if kind == "json_schema" and not isinstance(fmt.get("schema"), dict):
        raise FieldError("a JSON schema object", fmt.get("schema"), ".format.schema")
    return fmt


def native_format(text_format: dict[str, Any]) -> str | dict[str, Any] | None:
    """A `text.format` object as the native `format`: None, "json" or a JSON schema."""
    kind = text_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return text_format["schema"]
    return None


def _refuse(what: str) -> Any:
    def parse(value: Any) -> Any:
        if value:
            raise RequestError(
                400,
                f"{what} is not supported: power's /v1/responses is stateless, "
                "send the whole conversation in input",
            )
        return None

    return parse


@request_class
class ResponsesRequest:
    """`POST /v1/responses`. After `validate()`, `think` holds the effective value from
    `reasoning.effort` or power's `think` extension."""

    model: str = field("")
    input: list[Message] = field(factory=list, parse=parse_responses_input)
    instructions: str = field("")
    tools: list[Tool] = field(factory=list, parse=parse_responses_tools)
    tool_choice: ToolChoice = field(factory=ToolChoice, parse=parse_tool_choice)
    parallel_tool_calls: bool = field(True)
    temperature: float | None = field(None)
    top_p: float | None = field(None)
    max_output_tokens: int | None = field(None)
    text_format: dict[str, Any] = field(
        factory=lambda: {"type": "text"}, key="text", parse=parse_text_format
    )
    reasoning_effort: str | None = field(None, key="reasoning", parse=parse_reasoning)
    think: bool | str | None = field(None, parse=parse_think)
    metadata: dict[str, Any] = field(factory=dict)
    stream: bool = field(False)
    previous_response_id: None = field(None, parse=_refuse("previous_response_id"))
    conversation: None = field(None, parse=_refuse("conversation"))
    background: None = field(None, parse=_refuse("background"))
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)

    def validate(self) -> None:
        require_model(self.model)
        if not self.input:
            raise RequestError(400, "input: at least one input item is required")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise RequestError(400, "max_output_tokens must be at least 1")
        if self.reasoning_effort:
            self.think = think_from_reasoning_effort(self.reasoning_effort)
