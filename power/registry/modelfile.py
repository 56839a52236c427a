"""Modelfiles: parse the text into a `Modelfile`, and write one back (`format_modelfile`).

Syntax (Ollama's, docs/modelfile.md):

    # comment
    FROM <model name | path to a GGUF file | path to a safetensors folder>
    PARAMETER <name> <value>            typed by power.options; `stop` may repeat
    TEMPLATE <text>                     Go text/template
    SYSTEM <text>
    ADAPTER <path>
    LICENSE <text>                      may repeat
    MESSAGE <system|user|assistant> <text>
    DRAFT <model name | path to a GGUF file>   a draft model for speculative decoding
    REQUIRES <version>                  the minimum Ollama version the model needs (semver)
    RENDERER <name>                     Ollama's built-in prompt renderer to use
    PARSER <name>                       Ollama's built-in output parser to use

Commands are case-insensitive. A value runs to the end of its line, or is quoted: `"…"` or
`\"\"\"…\"\"\"`, and a quoted value may span lines. A quote closes at the first closing quote
that is followed by white space or the end of the text (Ollama's rule), so a value may contain
quotes as long as none of them closes it early. Unquoted values lose surrounding white space.

Every error is a `ModelfileError` whose `line` is the 1-based line it was found on.
`format_modelfile` picks, for each value, the plainest spelling that parses back to exactly
that value, so `parse_modelfile(format_modelfile(m)) == m`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from power.messages import Message
from power.options import OptionError, coerce_option
from power.version import normalize_requires

COMMANDS = (
    "from",
    "parameter",
    "template",
    "system",
    "adapter",
    "license",
    "message",
    "draft",
    "requires",
    "renderer",
    "parser",
)
MESSAGE_ROLES = ("system", "user", "assistant")
_SPACE = " \t"


class ModelfileError(ValueError):
    """A Modelfile that cannot be parsed; `line` is 1-based (None when no line is to blame)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"(line {line}): {message}" if line else message)
        self.message = message
        self.line = line


@attrs.define
class Modelfile:
    """What a Modelfile says. `sources` are the FROM arguments in order (the first is the
    model; Ollama's `show` writes a vision projector as a second FROM). `draft` is the DRAFT
    argument as written (a model name or a path); `requires` is stored without a `v`; `renderer`
    and `parser` are names kept in the config blob. None means "not given"."""

    sources: list[str] = attrs.field(factory=list)
    parameters: dict[str, Any] = attrs.field(factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = attrs.field(factory=list)
    license: list[str] = attrs.field(factory=list)
    messages: list[Message] = attrs.field(factory=list)
    draft: str | None = None
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None

    @property
    def from_(self) -> str:
        return self.sources[0] if self.sources else ""


def gguf_files_in_folder(folder: Path) -> list[Path]:
    """The GGUF files that `FROM <folder>` stands for (a model and its vision projector), sorted
    by name; none when the folder holds safetensors (those are converted instead), as Ollama's
    client decides."""
    if any(folder.glob("*.safetensors")):
        return []
    return sorted(path for path in folder.glob("*.gguf") if path.is_file())


# ---------------------------------------------------------------- parsing


class _Cursor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.position) + 1

    def at_end(self) -> bool:
        return self.position >= len(self.text)

    def peek(self) -> str:
        return self.text[self.position] if self.position < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek() and self.peek() in _SPACE:
            self.position += 1

    def skip_to_next_line(self) -> None:
        end = self.text.find("\n", self.position)
        self.position = len(self.text) if end < 0 else end + 1

    def word(self, allowed: str) -> str:
        start = self.position
        while self.peek() and (
            self.peek().isascii() and (self.peek().isalnum() or self.peek() in allowed)
        ):
            self.position += 1
        return self.text[start : self.position]


def _closing_quote(text: str, quote: str, start: int) -> int:
    """Index of the closing `quote` searched from `start`: the first one followed by white
    space or the end of the text; -1 when there is none."""
    position = start
    while True:
        found = text.find(quote, position)
        if found < 0:
            return -1
        after = found + len(quote)
        if after >= len(text) or text[after] in " \t\r\n":
            return found
        position = found + 1


def _read_value(cursor: _Cursor) -> str:
    """The value starting at the cursor (after the command's arguments and white space)."""
    text = cursor.text
    line = cursor.line
    for quote in ('"""', '"'):
        if text.startswith(quote, cursor.position):
            start = cursor.position + len(quote)
            end = _closing_quote(text, quote, start)
            if end < 0:
                raise ModelfileError(f"unterminated {quote} quote", line)
            value = text[start:end]
            cursor.position = end + len(quote)
            cursor.skip_spaces()
            if cursor.peek() == "#" or cursor.peek() in ("\n", ""):
                cursor.skip_to_next_line()
            else:
                raise ModelfileError("unexpected text after the closing quote", cursor.line)
            return value
    end = text.find("\n", cursor.position)
    end = len(text) if end < 0 else end
    value = text[cursor.position : end].strip()
    cursor.position = end
    cursor.skip_to_next_line()
    return value


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text. Raises ModelfileError (with the line number) on unknown commands,
    unknown parameters, values of the wrong type, bad message roles, unterminated quotes and a
    missing FROM."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    cursor = _Cursor(text)
    result = Modelfile()
    while not cursor.at_end():
        cursor.skip_spaces()
        char = cursor.peek()
        if char == "":
            break
        if char == "\n":
            cursor.position += 1
            continue
        if char == "#":
            cursor.skip_to_next_line()
            continue
        line = cursor.line
        command = cursor.word("")
        if not command or command.lower() not in COMMANDS or cursor.peek() not in _SPACE:
            shown = command or cursor.text[cursor.position : cursor.position + 20].split("\n")[0]
            raise ModelfileError(
                f"unknown command {shown!r}: a command must be one of "
                + ", ".join(c.upper() for c in COMMANDS),
                line,
            )
        command = command.lower()
        cursor.skip_spaces()
        if command == "parameter":
            name = cursor.word("_")
            if not name or cursor.peek() not in _SPACE:
                raise ModelfileError("PARAMETER needs a name and a value", line)
            cursor.skip_spaces()
            value = _read_value(cursor)
            _add_parameter(result, name.lower(), value, line)
        elif command == "message":
            role = cursor.word("")
            if role.lower() not in MESSAGE_ROLES or cursor.peek() not in _SPACE:
                raise ModelfileError(
                    'message role must be one of "system", "user", or "assistant"', line
                )
            cursor.skip_spaces()
            result.messages.append(Message(role=role.lower(), content=_read_value(cursor)))
        else:
            value = _read_value(cursor)
            if command == "from":
                if not value:
                    raise ModelfileError("FROM needs a model name or a path", line)
                result.sources.append(value)
            elif command == "template":
                result.template = value
            elif command == "system":
                result.system = value
            elif command == "adapter":
                if not value:
                    raise ModelfileError("ADAPTER needs a path", line)
                result.adapters.append(value)
            elif command == "license":
                result.license.append(value)
            elif command == "draft":
                if not value:
                    raise ModelfileError("DRAFT needs a model name or a path", line)
                result.draft = value
            elif command == "requires":
                try:
                    result.requires = normalize_requires(value)
                except ValueError as error:
                    raise ModelfileError(str(error), line) from None
            elif command == "renderer":
                result.renderer = value
            elif command == "parser":
                result.parser = value
    if not result.sources:
        raise ModelfileError("no FROM line")
    return result


def _add_parameter(result: Modelfile, name: str, value: str, line: int) -> None:
    try:
        typed = coerce_option(name, value)
    except OptionError as error:
        raise ModelfileError(str(error), line) from None
    if name == "stop":
        result.parameters.setdefault("stop", []).extend(typed)
    else:
        result.parameters[name] = typed


# ---------------------------------------------------------------- formatting


def _parses_back(spelling: str, value: str) -> bool:
    cursor = _Cursor(spelling + "\n")
    try:
        return _read_value(cursor) == value and cursor.at_end()
    except ModelfileError:
        return False


def quote_value(value: str) -> str:
    """The plainest spelling of `value` that parses back to it: bare, `"…"` or `\"\"\"…\"\"\"`.
    Raises ValueError for the rare text no spelling can carry (a quote that would close early
    in every form)."""
    bare_ok = (
        value == value.strip() and "\n" not in value and value != "" and not value.startswith('"')
    )
    if bare_ok:
        return value
    candidates = (
        (f'"""{value}"""', f'"{value}"') if "\n" in value else (f'"{value}"', f'"""{value}"""')
    )
    for spelling in candidates:
        if _parses_back(spelling, value):
            return spelling
    raise ValueError(f"cannot write {value!r} as a Modelfile value")


def format_value(value: Any) -> str:
    """A parameter value as Modelfile text (bools lower-case, floats in shortest form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_modelfile(
    modelfile: Modelfile | None = None,
    *,
    sources: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    adapters: list[str] | None = None,
    license: list[str] | None = None,
    messages: list[Message] | None = None,
    draft: str | None = None,
    requires: str | None = None,
    renderer: str | None = None,
    parser: str | None = None,
    header: str = "",
) -> str:
    """Modelfile text for a `Modelfile` (or for the same fields given one by one), in the order
    Ollama's `show` writes: FROM, ADAPTER, DRAFT, TEMPLATE, SYSTEM, RENDERER, PARSER, REQUIRES,
    PARAMETER, LICENSE, MESSAGE. `header` (e.g. comment lines) is written first, as is."""
    if modelfile is not None:
        sources = modelfile.sources
        parameters = modelfile.parameters
        template = modelfile.template
        system = modelfile.system
        adapters = modelfile.adapters
        license = modelfile.license
        messages = modelfile.messages
        draft = modelfile.draft
        requires = modelfile.requires
        renderer = modelfile.renderer
        parser = modelfile.parser
    lines: list[str] = []
    for source in sources or []:
        lines.append(f"FROM {quote_value(source)}")
    for adapter in adapters or []:
        lines.append(f"ADAPTER {quote_value(adapter)}")
    if draft is not None:
        lines.append(f"DRAFT {quote_value(draft)}")
    if template is not None:
        lines.append(f"TEMPLATE {quote_value(template)}")
    if system is not None:
        lines.append(f"SYSTEM {quote_value(system)}")
    for command, text in (("RENDERER", renderer), ("PARSER", parser), ("REQUIRES", requires)):
        if text is not None:
            lines.append(f"{command} {quote_value(text)}")
    for name, value in (parameters or {}).items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {quote_value(format_value(item))}")
    for text in license or []:
        lines.append(f"LICENSE {quote_value(text)}")
    for message in messages or []:
        lines.append(f"MESSAGE {message.role} {quote_value(message.content)}")
    return header + "".join(line + "\n" for line in lines)
