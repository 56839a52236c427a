"""Typed requests of every route, parsed from the raw JSON body at the edge.

`parse_request(cls, body)` turns a request body into one of the attrs classes below or raises
`RequestError(status, message)` (always 400 here) with Ollama's message where it has one:
`missing request body`, `model is required`, `invalid input type`, `top_logprobs must be
between 0 and 20`, `raw mode does not support template, system, or context`,
`[] is too short - 'messages'` (OpenAI chat). Fields of the wrong JSON type are named in the
message (`invalid value for "messages[1].content": expected a string, got number`). Unknown
keys are ignored, as are nulls (a null field keeps its default). Option values are coerced by
`power.options.parse_options` (unknown option keys are dropped with a logged warning).

The JSON is structured by a cattrs converter with strict primitive hooks (no `5` → `"5"`
coercion, no `true` → `1`); fields with richer rules (format, think, keep_alive, images,
messages, tools, options, embed input) carry their own parser in the field metadata.
OpenAI request types live in `openai_schemas`, built with the same machinery. A request type
defined below `power.http` (the registry's `CreateRequest`) is registered with `wire_request`:
its JSON names, parsers and validation stay here, so only `power.http` knows the wire form.
"""

from __future__ import annotations

import base64
import binascii
import json
import typing
from collections.abc import Callable
from typing import Any

import attrs
import cattrs

from power.durations import parse_keep_alive
from power.messages import (
    Message,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolChoice,
    ToolChoiceMode,
    ToolFunction,
)
from power.options import OptionError, parse_options
from power.registry.create import CreateRequest

THINK_LEVELS = ("low", "medium", "high", "max")


class RequestError(Exception):
    """A request the server refuses: `status` for the HTTP answer, `message` for its body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FieldError(Exception):
    """A JSON value of the wrong type or shape at `path` (turned into a 400 naming the field)."""

    def __init__(self, expected: str, value: Any, path: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.path = path

    def at(self, prefix: str) -> FieldError:
        self.path = prefix + self.path
        return self

    def message(self) -> str:
        got = "an empty string" if self.value == "" else json_type(self.value)
        return f'invalid value for "{self.path}": expected {self.expected}, got {got}'


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# ---------------------------------------------------------------- the converter

converter = cattrs.Converter(detailed_validation=False)


def _strict_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    raise FieldError("a string", value)


def _strict_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise FieldError("a boolean", value)


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise FieldError("an integer", value)


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise FieldError("a number", value)


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)


def _list_hook(type_: Any) -> Callable[[Any, Any], list]:
    (item_type,) = typing.get_args(type_) or (Any,)

    def structure(value: Any, _: Any) -> list:
        if not isinstance(value, list):
            raise FieldError("an array", value)
        out = []
        for index, item in enumerate(value):
            try:
                out.append(converter.structure(item, item_type))
            except FieldError as err:
                raise err.at(f"[{index}]") from None
        return out

    return structure


def _dict_hook(type_: Any) -> Callable[[Any, Any], dict]:
    _, value_type = typing.get_args(type_) or (str, Any)

    def structure(value: Any, _: Any) -> dict:
        if not isinstance(value, dict):
            raise FieldError("an object", value)
        out = {}
        for key, item in value.items():
            try:
                out[key] = converter.structure(item, value_type)
            except FieldError as err:
                raise err.at(f".{key}") from None
        return out

    return structure


converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is list, _list_hook)
converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is dict, _dict_hook)


def field(
    default: Any = attrs.NOTHING,
    *,
    factory: Callable[[], Any] | None = None,
    parse: Callable[[Any], Any] | None = None,
    key: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """An attrs field of a request: its JSON `key` (default: the name), `aliases` used when the
    key is absent or empty, and an optional `parse` function replacing type-based structuring."""
    metadata = {"parse": parse, "key": key, "aliases": aliases}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


#: Request types defined outside power.http: their fields' metadata (as `field` would have set
#: it) and their validation, by class.
_WIRE_FORMS: dict[type, tuple[dict[str, dict[str, Any]], Callable[[Any], None]]] = {}


def structure_request(data: dict[str, Any], cls: type) -> Any:
    """Build a request object from a decoded JSON object (the converter's hook for requests)."""
    attrs.resolve_types(cls)
    wire_fields = _WIRE_FORMS[cls][0] if cls in _WIRE_FORMS else None
    values: dict[str, Any] = {}
    for attribute in attrs.fields(cls):
        meta = attribute.metadata if wire_fields is None else wire_fields.get(attribute.name, {})
        key = meta.get("key") or attribute.name
        raw = data.get(key)
        for alias in meta.get("aliases", ()):
            if (raw is None or raw == "") and data.get(alias) not in (None, ""):
                key, raw = alias, data[alias]
        if raw is None:
            continue
        parse = meta.get("parse")
        try:
            values[attribute.name] = (
                parse(raw) if parse else converter.structure(raw, attribute.type)
            )
        except FieldError as err:
            if not err.path.startswith(("[", ".")) and err.path:
                err.path = "." + err.path
            raise RequestError(400, err.at(key).message()) from None
        except OptionError as err:
            raise RequestError(400, str(err)) from None
        except ValueError as err:
            raise RequestError(400, str(err)) from None
    return cls(**values)


def request_class(cls: type) -> type:
    """Class decorator: an attrs request type structured by `structure_request`."""
    cls = attrs.define(kw_only=True)(cls)
    converter.register_structure_hook(cls, structure_request)
    return cls


def wire_request(cls: type, validate: Callable[[Any], None], **fields: dict[str, Any]) -> None:
    """Parse the attrs class `cls` (defined outside power.http) as a request: `fields` gives
    a field's `key`, `aliases` and `parse` as `field` does; `validate(request)` runs last."""
    _WIRE_FORMS[cls] = (fields, validate)
    converter.register_structure_hook(cls, structure_request)


def load_json_body(body: bytes | str | None) -> dict[str, Any]:
    """Decode a request body into a JSON object; `null` counts as `{}` (as in Go)."""
    if body is None or not (body.strip() if isinstance(body, bytes | str) else body):
        raise RequestError(400, "missing request body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"invalid JSON in request body: {err}") from None
    except RecursionError:
        raise RequestError(400, "invalid JSON in request body: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {json_type(data)}")
    return data


def parse_request(cls: type[Any], body: bytes | str | None) -> Any:
    """Parse and validate a request body into `cls`; raises RequestError (400)."""
    request = converter.structure(load_json_body(body), cls)
    if cls in _WIRE_FORMS:
        _WIRE_FORMS[cls][1](request)
    else:
        request.validate()
    return request


# ---------------------------------------------------------------- field parsers


def parse_format(value: Any) -> str | dict[str, Any] | None:
    """`format`: absent or "" → None, "json" → "json", an object → a JSON schema."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip() in ("", "json"):
        return value.strip() or None
    raise ValueError('invalid format: expected "json" or a JSON schema object')


def parse_think(value: Any) -> bool | str:
    """`think`: true/false or a level "low" | "medium" | "high" | "max"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return value
    raise ValueError(
        f'invalid think value {value!r}: expected true, false, "low", "medium", "high" or "max"'
    )


def parse_keep_alive_field(value: Any) -> float | None:
    return parse_keep_alive(value)


def decode_base64_image(value: Any) -> bytes:
    """A base64 image (a `data:...;base64,` prefix is tolerated) to bytes."""
    if not isinstance(value, str):
        raise FieldError("a base64 string", value)
    text = value.strip()
    if text.startswith("data:") and ";base64," in text[:200]:
        text = text.split(";base64,", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError("valid base64 image data", value) from None


def parse_images(value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise FieldError("an array of base64 strings", value)
    images = []
    for index, item in enumerate(value):
        try:
            images.append(decode_base64_image(item))
        except FieldError as err:
            raise err.at(f"[{index}]") from None
    return images


def parse_arguments(value: Any) -> dict[str, Any]:
    """Tool call arguments: an object, or a JSON string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise FieldError("an object or a JSON string of an object", value) from None
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    return value


def get_field(data: dict[str, Any], key: str, type_: Any, default: Any) -> Any:
    """`data[key]` structured as `type_` (default when absent or null); errors name the key."""
    raw = data.get(key)
    if raw is None:
        return default
    try:
        return converter.structure(raw, type_)
    except FieldError as err:
        raise err.at("." + key) from None


def parse_tool_call(value: Any, index: int = 0) -> ToolCall:
    """A native tool call `{"id"?, "function": {"index"?, "name", "arguments"}}`."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    function = value.get("function")
    if not isinstance(function, dict):
        raise FieldError("an object", function, ".function")
    name = get_field(function, "name", str, "")
    try:
        arguments = parse_arguments(function.get("arguments") or {})
    except FieldError as err:
        raise err.at(".function.arguments") from None
    return ToolCall(
        id=get_field(value, "id", str, ""),
        function=ToolCallFunction(
            name=name, arguments=arguments, index=get_field(function, "index", int, index)
        ),
    )


def parse_message(value: Any) -> Message:
    """A native chat message; `role` is required and lower-cased."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    role = value.get("role")
    if not isinstance(role, str) or not role:
        raise FieldError("a role string", role, ".role")
    tool_calls = []
    for index, call in enumerate(get_field(value, "tool_calls", list[Any], [])):
        try:
            tool_calls.append(parse_tool_call(call, index))
        except FieldError as err:
            raise err.at(f".tool_calls[{index}]") from None
    try:
        images = parse_images(value["images"]) if value.get("images") is not None else []
    except FieldError as err:
        raise err.at(".images") from None
    return Message(
        role=role.lower(),
        content=get_field(value, "content", str, ""),
        images=images,
        thinking=get_field(value, "thinking", str, ""),
        tool_calls=tool_calls,
        tool_name=get_field(value, "tool_name", str, ""),
        tool_call_id=get_field(value, "tool_call_id", str, ""),
    )


def parse_tool(value: Any) -> Tool:
    """A tool definition `{"type": "function", "function": {name, description, parameters}}`."""
    if not isinstance(value, dict):
        raise FieldError("an object", value)
    function = value.get("function")
    if not isinstance(function, dict):
        raise FieldError("an object", function, ".function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError("a tool name string", name, ".function.name")
    return Tool(
        type=get_field(value, "type", str, "function"),
        function=ToolFunction(
            name=name,
            description=get_field(function, "description", str, ""),
            parameters=get_field(function, "parameters", dict[str, Any], {}),
        ),
    )


_TOOL_CHOICE_MODES = {
    "auto": ToolChoiceMode.AUTO,
    "none": ToolChoiceMode.NONE,
    "required": ToolChoiceMode.REQUIRED,
    "any": ToolChoiceMode.REQUIRED,  # Anthropic's spelling
}


def parse_tool_choice(value: Any) -> ToolChoice:
    """`tool_choice` in any API style's spelling: "auto" | "none" | "required" | "any", or an
    object: `{"type": "auto"|"none"|"any"|"required"}`, a named tool as OpenAI chat
    (`{"type": "function", "function": {"name"}}`), Responses (`{"type": "function", "name"}`)
    or Anthropic (`{"type": "tool", "name"}`) spell it; `disable_parallel_tool_use` is read."""
    if isinstance(value, str):
        mode = _TOOL_CHOICE_MODES.get(value.lower())
        if mode is None:
            raise ValueError(
                f'invalid tool_choice {value!r}: expected "auto", "none", "required" or a tool'
            )
        return ToolChoice(mode)
    if not isinstance(value, dict):
        raise FieldError("a string or an object", value)
    kind = get_field(value, "type", str, "")
    parallel = not get_field(value, "disable_parallel_tool_use", bool, False)
    if kind in _TOOL_CHOICE_MODES:
        return ToolChoice(_TOOL_CHOICE_MODES[kind], parallel=parallel)
    if kind in ("function", "tool"):
        function = value.get("function")
        name = get_field(function, "name", str, "") if isinstance(function, dict) else ""
        name = name or get_field(value, "name", str, "")
        if not name:
            raise ValueError("tool_choice names no tool: expected a function name")
        return ToolChoice(ToolChoiceMode.TOOL, name=name, parallel=parallel)
    raise ValueError(f"unsupported tool_choice type {kind!r}")


def list_of(parse_item: Callable[[Any], Any]) -> Callable[[Any], list]:
    """A field parser for an array whose items `parse_item` parses (errors name the index)."""

    def parse(value: Any) -> list:
        if not isinstance(value, list):
            raise FieldError("an array", value)
        out = []
        for index, item in enumerate(value):
            try:
                out.append(parse_item(item))
            except FieldError as err:
                raise err.at(f"[{index}]") from None
        return out

    return parse


def parse_embed_input(value: Any) -> list[str]:
    """`/api/embed` input: a string (empty → no input) or an array of strings."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RequestError(400, "invalid input type")


def parse_license(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return converter.structure(value, list[str])


def require_model(model: str) -> None:
    if not model:
        raise RequestError(400, "model is required")


def check_top_logprobs(top_logprobs: int) -> None:
    if not 0 <= top_logprobs <= 20:
        raise RequestError(400, "top_logprobs must be between 0 and 20")


def check_dimensions(dimensions: int | None) -> None:
    if dimensions is not None and dimensions < 0:
        raise RequestError(400, "dimensions must be a non-negative integer")


# ---------------------------------------------------------------- native requests


@request_class
class GenerateRequest:
    """`POST /api/generate`."""

    model: str = field("")
    prompt: str = field("")
    suffix: str = field("")
    system: str = field("")
    template: str = field("")
    context: list[int] = field(factory=list)
    stream: bool = field(True)
    raw: bool = field(False)
    format: str | dict[str, Any] | None = field(None, parse=parse_format)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)
    images: list[bytes] = field(factory=list, parse=parse_images)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    think: bool | str | None = field(None, parse=parse_think)
    truncate: bool | None = field(None)
    shift: bool | None = field(None)
    logprobs: bool = field(False)
    top_logprobs: int = field(0)

    def validate(self) -> None:
        require_model(self.model)
        check_top_logprobs(self.top_logprobs)
        if self.raw and (self.template or self.system or self.context):
            raise RequestError(400, "raw mode does not support template, system, or context")


@request_class
class ChatRequest:
    """`POST /api/chat`."""

    model: str = field("")
    messages: list[Message] = field(factory=list, parse=list_of(parse_message))
    tools: list[Tool] = field(factory=list, parse=list_of(parse_tool))
    #: power's extension (Ollama has none): enforced by a grammar when it forces a call
    tool_choice: ToolChoice = field(factory=ToolChoice, parse=parse_tool_choice)
    format: str | dict[str, Any] | None = field(None, parse=parse_format)
    stream: bool = field(True)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)
    think: bool | str | None = field(None, parse=parse_think)
    truncate: bool | None = field(None)
    shift: bool | None = field(None)
    logprobs: bool = field(False)
    top_logprobs: int = field(0)

    def validate(self) -> None:
        require_model(self.model)
        check_top_logprobs(self.top_logprobs)


@request_class
class EmbedRequest:
    """`POST /api/embed`: `input` is normalised to a list (an empty one only loads the model)."""

    model: str = field("")
    input: list[str] = field(factory=list, parse=parse_embed_input)
    truncate: bool = field(True)
    dimensions: int | None = field(None)
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)

    def validate(self) -> None:
        require_model(self.model)
        check_dimensions(self.dimensions)


@request_class
class EmbeddingsRequest:
    """Legacy `POST /api/embeddings`: one prompt, one vector."""

    model: str = field("")
    prompt: str = field("")
    keep_alive: float | None = field(None, parse=parse_keep_alive_field)
    options: dict[str, Any] = field(factory=dict, parse=parse_options)

    def validate(self) -> None:
        require_model(self.model)


@request_class
class PullRequest:
    """`POST /api/pull` (`name` accepted for old clients; username/password ignored)."""

    model: str = field("", aliases=("name",))
    insecure: bool = field(False)
    stream: bool = field(True)

    def validate(self) -> None:
        require_model(self.model)


@request_class
class PushRequest(PullRequest):
    """`POST /api/push` (`name` accepted for old clients): the same fields as a pull."""


# `POST /api/create` parses into the registry's `CreateRequest` (the one create request type):
# `from` is `from_`; `name` and `quantization` are old clients' spellings; `parameters` are
# coerced like options; a `modelfile` text (pre-0.5 clients) is ignored.
wire_request(
    CreateRequest,
    lambda request: require_model(request.model),
    model={"aliases": ("name",)},
    from_={"key": "from"},
    license={"parse": parse_license},
    parameters={"parse": parse_options},
    messages={"parse": list_of(parse_message)},
    quantize={"aliases": ("quantization",)},
)


@request_class
class ShowRequest:
    """`POST /api/show` (`name` accepted for old clients)."""

    model: str = field("", aliases=("name",))
    verbose: bool = field(False)
    system: str = field("")
    template: str = field("")
    options: dict[str, Any] = field(factory=dict, parse=parse_options)

    def validate(self) -> None:
        require_model(self.model)


@request_class
class CopyRequest:
    """`POST /api/copy`."""

    source: str = field("")
    destination: str = field("")

    def validate(self) -> None:
        if not self.source:
            raise RequestError(400, f"source {json.dumps(self.source)} is invalid")
        if not self.destination:
            raise RequestError(400, f"destination {json.dumps(self.destination)} is invalid")


@request_class
class DeleteRequest:
    """`DELETE /api/delete` (`name` accepted for old clients)."""

    model: str = field("", aliases=("name",))

    def validate(self) -> None:
        require_model(self.model)


# ---------------------------------------------------------------- native wire forms


def tool_call_to_json(call: ToolCall) -> dict[str, Any]:
    """A tool call as Ollama writes it: arguments stay an object."""
    out: dict[str, Any] = {
        "function": {
            "index": call.function.index,
            "name": call.function.name,
            "arguments": call.function.arguments,
        }
    }
    if call.id:
        out = {"id": call.id, **out}
    return out


def message_to_json(message: Message) -> dict[str, Any]:
    """A message as Ollama writes it (empty optional fields left out, images base64)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.thinking:
        out["thinking"] = message.thinking
    if message.images:
        out["images"] = [base64.b64encode(image).decode("ascii") for image in message.images]
    if message.tool_calls:
        out["tool_calls"] = [tool_call_to_json(call) for call in message.tool_calls]
    if message.tool_name:
        out["tool_name"] = message.tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out
