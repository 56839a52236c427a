"""A grammar that makes a model call a tool, written in the model's own tool-call format.

`tool_choice` "required"/"any" or a named tool is a promise that the answer is a call; a small
model asked nicely still answers in prose. `tool_call_grammar` turns the promise into a GBNF
grammar (llama.cpp's grammar language) whose sentences are exactly the text the model's
template expects for a call, e.g. for Qwen 2.5 (Hermes style)

    <tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>

with the arguments constrained by the tool's JSON schema. The engine samples under it
(`GenerationParams.grammar`) and the unchanged `toolcalls.ToolCallParser` reads the result, so a
forced call travels the same road as a spontaneous one. A grammar literal also accepts a special
token whose text it spells (`<tool_call>` is one token in Qwen's vocabulary): llama.cpp's
grammar sampler matches tokens by their rendered text.

The format is chosen from the chat template (`template_hint`), as the parser chooses its tags:
`<tool_call>` (Qwen 2.5/3, Hermes; with `<function=` as well: Qwen3-Coder, JSON arguments
inside its function tag), `<function=NAME>` (Llama 3.1 custom tools, Functionary), Mistral's
`[TOOL_CALLS]` (a JSON list, or `NAME[ARGS]{...}` when the template says `[ARGS]`), DeepSeek's
`<｜tool▁calls▁begin｜>` blocks, Llama's bare `{"name", "parameters"}` (`<|python_tag|>`
templates), and bare `{"name", "arguments"}` JSON for a template that names no tag.

Thinking: `thinking="optional"` lets a `<think>...</think>` block come first,
`thinking="open"` starts inside one (the prompt ended with `<think>`); then the call.

The JSON-schema converter is the engine's (`power.engine.grammar.json_schema_to_gbnf`); this
package may not import the engine, so the caller passes it in as `schema_to_gbnf`. A schema it
cannot express constrains the arguments to any JSON object instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import attrs

from power.messages import Tool, ToolChoice, ToolChoiceMode

SchemaToGbnf = Callable[[dict[str, Any]], str]

_FREE_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


@attrs.frozen
class CallFormat:
    """How one model writes tool calls: `before % name` + arguments JSON + `after` per call,
    calls joined by `separator`, all between `open` and `close`. `json_name`: the name sits
    inside a JSON string (escaped as such)."""

    kind: str
    before: str
    after: str
    separator: str = "\n"
    open: str = ""
    close: str = ""
    json_name: bool = True

    def call_prefix(self, name: str) -> str:
        return self.before % (json.dumps(name)[1:-1] if self.json_name else name)


HERMES = CallFormat("hermes", '<tool_call>\n{"name": "%s", "arguments": ', "}\n</tool_call>")
QWEN3_CODER = CallFormat(
    "qwen3-coder",
    "<tool_call>\n<function=%s>\n",
    "\n</function>\n</tool_call>",
    json_name=False,
)
FUNCTION_TAG = CallFormat("function-tag", "<function=%s>", "</function>", "", json_name=False)
MISTRAL_LIST = CallFormat(
    "mistral", '{"name": "%s", "arguments": ', "}", ", ", open="[TOOL_CALLS] [", close="]"
)
MISTRAL_ARGS = CallFormat("mistral-args", "[TOOL_CALLS]%s[ARGS]", "", "", json_name=False)
DEEPSEEK = CallFormat(
    "deepseek",
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>%s\n```json\n",
    "\n```<｜tool▁call▁end｜>",
    open="<｜tool▁calls▁begin｜>",
    close="<｜tool▁calls▁end｜>",
    json_name=False,
)
LLAMA_JSON = CallFormat("llama-json", '{"name": "%s", "parameters": ', "}")
BARE_JSON = CallFormat("json", '{"name": "%s", "arguments": ', "}")


def call_format(template_hint: str | None) -> CallFormat:
    """The tool-call format a chat template teaches its model (bare JSON when it names none)."""
    hint = template_hint or ""
    if "<tool_call>" in hint:
        return QWEN3_CODER if "<function=" in hint else HERMES
    if "<function=" in hint:
        return FUNCTION_TAG
    if "[TOOL_CALLS]" in hint:
        return MISTRAL_ARGS if "[ARGS]" in hint else MISTRAL_LIST
    if "tool▁calls▁begin" in hint or "tool▁call▁begin" in hint:
        return DEEPSEEK
    if "<|python_tag|>" in hint:
        return LLAMA_JSON
    return BARE_JSON


# ---------------------------------------------------------------- GBNF text helpers


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _class_char(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char


def text_without(tag: str) -> str:
    """A GBNF expression for text that does not contain `tag` (good enough for thinking: text
    that ends with a partial `tag` right before the real one may swallow it)."""
    expression = ""
    for char in reversed(tag[1:]):
        head = f"[^{_class_char(char)}]"
        expression = f"( {head} | {gbnf_literal(char)} {expression} )" if expression else head
    return f"( [^{_class_char(tag[0])}] | {gbnf_literal(tag[0])} {expression} )*"


_RULE_LINE = re.compile(r"^([A-Za-z0-9-]+) ::= (.*)$")
_BODY_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}|[A-Za-z0-9-]+|.')


def prefixed_rules(grammar: str, prefix: str) -> list[str]:
    """The rules of a GBNF grammar (one `name ::= body` a line) with every rule name prefixed,
    where it is defined and where it is used, so that several grammars can share one file."""
    rules = []
    for line in grammar.splitlines():
        match = _RULE_LINE.match(line)
        if match is None:
            if line.strip():
                raise ValueError(f"unexpected grammar line: {line!r}")
            continue
        rules.append((match.group(1), match.group(2)))
    names = {name for name, _ in rules}

    def rename(body: str) -> str:
        return "".join(
            prefix + token if token in names else token for token in _BODY_TOKEN.findall(body)
        )

    return [f"{prefix}{name} ::= {rename(body)}" for name, body in rules]


# ---------------------------------------------------------------- the grammar


def arguments_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A tool's parameters as the schema of its call's arguments: an object. A schema with no
    properties declared (or none at all) allows any object, as JSON schema does."""
    schema = dict(parameters or {})
    if schema.get("type") not in (None, "object"):
        return dict(_FREE_OBJECT)
    composite = any(key in schema for key in ("anyOf", "oneOf", "allOf", "$ref"))
    if not composite:
        schema["type"] = "object"
        if "properties" not in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = True
    return schema


def _arguments_rules(tool: Tool, prefix: str, schema_to_gbnf: SchemaToGbnf) -> list[str]:
    try:
        grammar = schema_to_gbnf(arguments_schema(tool.function.parameters))
    except (ValueError, TypeError, KeyError, RecursionError):
        grammar = schema_to_gbnf(dict(_FREE_OBJECT))
    return prefixed_rules(grammar, prefix)


def tool_call_grammar(
    tools: list[Tool],
    choice: ToolChoice,
    template_hint: str | None,
    schema_to_gbnf: SchemaToGbnf,
    *,
    thinking: str | None = None,
) -> str | None:
    """The GBNF grammar that forces `choice` (None when it forces nothing).

    REQUIRED: one call of any of `tools`, or several separated as the format separates them
    when `choice.parallel`; TOOL: exactly one call of `choice.name`. `thinking`: None, "optional"
    or "open" (see the module docstring). Raises ValueError when `choice` names a tool that
    `tools` lacks or forces a call with no tools.
    """
    if not choice.forces_call:
        return None
    if choice.mode is ToolChoiceMode.TOOL:
        chosen = [tool for tool in tools if tool.function.name == choice.name]
        if not chosen:
            raise ValueError(f"tool_choice names {choice.name!r}, which is not among the tools")
    else:
        chosen = list(tools)
        if not chosen:
            raise ValueError("tool_choice requires a call but the request has no tools")
    fmt = call_format(template_hint)
    lines: list[str] = []
    alternatives = []
    for index, tool in enumerate(chosen):
        prefix = f"tool{index}-"
        lines += _arguments_rules(tool, prefix, schema_to_gbnf)
        name = f"call{index}"
        body = f"{gbnf_literal(fmt.call_prefix(tool.function.name))} {prefix}root"
        if fmt.after:
            body += f" {gbnf_literal(fmt.after)}"
        lines.append(f"{name} ::= {body}")
        alternatives.append(name)
    lines.append(f"call ::= {' | '.join(alternatives)}")
    calls = "call"
    if choice.mode is ToolChoiceMode.REQUIRED and choice.parallel:
        separator = f"{gbnf_literal(fmt.separator)} " if fmt.separator else ""
        calls = f"call ( {separator}call )*"
    root = " ".join(part for part in (_literal_or_empty(fmt.open), calls) if part)
    if fmt.close:
        root += f" {gbnf_literal(fmt.close)}"
    if thinking == "open":
        root = f'think-text "</think>" think-space {root}'
    elif thinking == "optional":
        root = f'( "<think>" think-text "</think>" think-space )? {root}'
    if thinking in ("open", "optional"):
        lines.append(f"think-text ::= {text_without('</think>')}")
        lines.append(r"think-space ::= [ \t\r\n]{0,8}")
    return "\n".join([f"root ::= {root}", *lines]) + "\n"


def _literal_or_empty(text: str) -> str:
    return gbnf_literal(text) if text else ""
