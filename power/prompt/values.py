"""The values Ollama hands its Go templates, built from power's conversation types.

Templates see Go structs with Go field names, so these helpers turn `power.messages` objects into
`GoStruct`s shaped like Ollama's template types:

- a message: `.Role .Content .Thinking .Images .ToolCalls .ToolName .ToolCallID`;
- a tool call: `.ID .Function.Index .Function.Name .Function.Arguments` (arguments print as
  JSON and range in sorted key order);
- a tool: `.Type .Function.Name .Function.Description .Function.Parameters.Type
  .Function.Parameters.Required .Function.Parameters.Properties` (a map of property name to
  `.Type .Description .Enum .Items .AnyOf .Properties .Required`). `json` renders them with
  Ollama's lower-case keys, and printing a tool, its function or its parameters gives JSON.

One deliberate difference: Ollama prints `{{ .Function }}` and `{{ .Function.Parameters }}` of a
tool as a Go struct dump (ollama/ollama#14601, a regression since v0.14); power prints them as
the JSON the templates (Qwen's among them) were written for.

Like Go's JSON decoder into Ollama's `ToolProperty`, schema keywords other than `type`,
`description`, `enum`, `items`, `anyOf`, `properties` and `required` are dropped from properties.
"""

from __future__ import annotations

from typing import Any

from power.gotemplate.values import (
    GoStruct,
    JsonStringList,
    JsonStringMap,
    NilSlice,
    OrderedJsonMap,
    marshal_json,
)
from power.messages import Message, Tool, ToolCall

_TOOL_PROPERTY_TAGS = {
    "AnyOf": "anyOf,omitempty",
    "Type": "type,omitempty",
    "Items": "items,omitempty",
    "Description": "description,omitempty",
    "Enum": "enum,omitempty",
    "Properties": "properties,omitempty",
    "Required": "required,omitempty",
}
_PARAMETERS_TAGS = {
    "Type": "type",
    "Defs": "$defs,omitempty",
    "Items": "items,omitempty",
    "Required": "required,omitempty",
    "Properties": "properties",
}
_FUNCTION_TAGS = {"Name": "name", "Description": "description", "Parameters": "parameters"}
_TOOL_TAGS = {"Type": "type", "Items": "items,omitempty", "Function": "function"}


def _as_json(value: GoStruct) -> str:
    return marshal_json(value)


class PropertyType(list):
    """Ollama's `PropertyType`: one JSON type name or several; prints `string` or `[a b]`."""

    def go_string(self) -> str:
        if not self:
            return ""
        if len(self) == 1:
            return self[0]
        return "[" + " ".join(self) + "]"

    def go_json(self) -> str:
        if len(self) == 1:
            return marshal_json(self[0])
        return marshal_json(list(self))


def _slice(value: Any) -> list[Any] | NilSlice:
    return list(value) if isinstance(value, list) and value else NilSlice()


def tool_property(schema: Any) -> GoStruct:
    """A JSON schema of one tool parameter as Ollama's `api.ToolProperty`."""
    if not isinstance(schema, dict):
        schema = {}
    raw_type = schema.get("type")
    if isinstance(raw_type, str):
        types = [raw_type]
    elif isinstance(raw_type, list):
        types = [t for t in raw_type if isinstance(t, str)]
    else:
        types = []
    properties = schema.get("properties")
    any_of = schema.get("anyOf")
    return GoStruct(
        "api.ToolProperty",
        {
            "AnyOf": [tool_property(s) for s in any_of]
            if isinstance(any_of, list) and any_of
            else NilSlice(),
            "Type": PropertyType(types),
            "Items": schema.get("items"),
            "Description": schema.get("description")
            if isinstance(schema.get("description"), str)
            else "",
            "Enum": _slice(schema.get("enum")),
            "Properties": (
                OrderedJsonMap({k: tool_property(v) for k, v in properties.items()})
                if isinstance(properties, dict)
                else None
            ),
            "Required": _slice(schema.get("required")),
        },
        json_tags=_TOOL_PROPERTY_TAGS,
    )


def tool_value(tool: Tool) -> GoStruct:
    """One tool as Ollama's template tool type."""
    parameters = tool.function.parameters or {}
    properties = parameters.get("properties")
    template_properties = (
        JsonStringMap({k: tool_property(v) for k, v in properties.items()})
        if isinstance(properties, dict)
        else JsonStringMap(nil=True)
    )
    parameters_value = GoStruct(
        "template.templateToolFunctionParameters",
        {
            "Type": parameters.get("type") if isinstance(parameters.get("type"), str) else "",
            "Defs": parameters.get("$defs"),
            "Items": parameters.get("items"),
            "Required": _slice(parameters.get("required")),
            "Properties": template_properties,
        },
        json_tags=_PARAMETERS_TAGS,
        stringer=_as_json,
    )
    function_value = GoStruct(
        "template.templateToolFunction",
        {
            "Name": tool.function.name,
            "Description": tool.function.description,
            "Parameters": parameters_value,
        },
        json_tags=_FUNCTION_TAGS,
        stringer=_as_json,
    )
    return GoStruct(
        "template.templateTool",
        {"Type": tool.type, "Items": None, "Function": function_value},
        json_tags=_TOOL_TAGS,
        stringer=_as_json,
    )


def tools_value(tools: list[Tool] | None) -> JsonStringList:
    """`.Tools`: prints as JSON; `None` stands for Ollama's nil list (false, prints `null`)."""
    if tools is None:
        return JsonStringList(nil=True)
    return JsonStringList(tool_value(t) for t in tools)


def tool_call_value(call: ToolCall) -> GoStruct:
    function = GoStruct(
        "template.templateToolCallFunction",
        {
            "Index": call.function.index,
            "Name": call.function.name,
            "Arguments": JsonStringMap(call.function.arguments or {}),
        },
    )
    return GoStruct("template.templateToolCall", {"ID": call.id, "Function": function})


def message_value(message: Message) -> GoStruct:
    """One message as Ollama's `*templateMessage`."""
    return GoStruct(
        "template.templateMessage",
        {
            "Role": message.role,
            "Content": message.content,
            "Thinking": message.thinking,
            "Images": list(message.images) if message.images else NilSlice(),
            "ToolCalls": [tool_call_value(c) for c in message.tool_calls]
            if message.tool_calls
            else NilSlice(),
            "ToolName": message.tool_name,
            "ToolCallID": message.tool_call_id,
        },
        pointer=True,
    )


def think_values(think: bool | str | None) -> dict[str, Any]:
    """`.Think`, `.ThinkLevel` and `.IsThinkSet` from a request's `think` (bool or level)."""
    if think is None:
        return {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if isinstance(think, bool):
        return {"Think": think, "ThinkLevel": "medium" if think else "", "IsThinkSet": True}
    return {
        "Think": think in ("high", "medium", "low", "max"),
        "ThinkLevel": think,
        "IsThinkSet": True,
    }
