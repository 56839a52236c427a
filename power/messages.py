"""Conversation types shared by the HTTP edge, the prompt renderer and the tool-call parser.

These are plain attrs classes; JSON field names are Ollama's (`tool_calls`, `tool_name`,
`tool_call_id`), and `arguments` of a tool call is an object (a dict), never a JSON string.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


@attrs.define
class ToolCallFunction:
    name: str
    arguments: dict[str, Any] = attrs.field(factory=dict)
    index: int = 0


@attrs.define
class ToolCall:
    function: ToolCallFunction
    id: str = ""


@attrs.define
class ToolFunction:
    name: str
    description: str = ""
    parameters: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class Tool:
    function: ToolFunction
    type: str = "function"


@attrs.define
class Message:
    role: str
    content: str = ""
    images: list[bytes] = attrs.field(factory=list)
    thinking: str = ""
    tool_calls: list[ToolCall] = attrs.field(factory=list)
    tool_name: str = ""
    tool_call_id: str = ""


class ToolChoiceMode(enum.Enum):
    """Whether the model may, must or must not call a tool."""

    AUTO = "auto"  # the model decides (the default)
    NONE = "none"  # no tools: they are not even shown to the model
    REQUIRED = "required"  # at least one call of any tool (OpenAI "required", Anthropic "any")
    TOOL = "tool"  # one call of the tool `name`


@attrs.frozen
class ToolChoice:
    """A request's `tool_choice`, whatever API style spelled it. `parallel` False allows one
    call only (OpenAI's `parallel_tool_calls: false`, Anthropic's `disable_parallel_tool_use`)."""

    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str = ""
    parallel: bool = True

    @property
    def forces_call(self) -> bool:
        return self.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.TOOL)
