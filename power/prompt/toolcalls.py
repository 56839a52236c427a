"""Finding tool calls in generated text while it streams.

`ToolCallParser.feed(text)` returns the text now known to be content and the tool calls now
complete; text that may still turn into a tool call is held back, so a tool call never reaches
`content`. The result does not depend on how the text was split (ids aside).

Recognised forms:
- `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2.5/3, Hermes), also with a
  list inside, and Qwen3-Coder's `<tool_call><function=NAME><parameter=KEY>value</parameter>...`;
- a bare JSON object `{"name": ..., "arguments"|"parameters": {...}}`, an OpenAI-shaped
  `{"function": {...}}`, or a list of them, at the start of the output (after whitespace or after
  a previous call), optionally inside a ```json fence; the name must be one of the request's tools;
- `[TOOL_CALLS] [{...}, ...]` and `[TOOL_CALLS]NAME[ARGS]{...}` (Mistral);
- `<|python_tag|>{...}` (Llama 3.x; several calls may follow, separated by `;`);
- `<function=NAME>{...}</function>` (Llama 3.1 custom tools, Functionary v3.1);
- DeepSeek's `<｜tool▁calls▁begin｜>...<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME ```json
  {...}``` <｜tool▁call▁end｜>...<｜tool▁calls▁end｜>` (R1 and V3.1 spellings).
Not recognised: Functionary v3.2's `>>>NAME` and Llama's `<|python_tag|>` python-call syntax.

`template_hint` (the model's chat template, or any text naming its tool tag) narrows the tags
watched for in mid-text to those the hint mentions; with no hint, or a hint that mentions none,
all are watched. Tagged calls are accepted whatever their name; bare JSON only for known tools.
A tagged block whose body is not a valid call is released as content. A JSON answer (e.g. with
`format`) whose first key could begin a call (`name`, `function`, ...) is held until it closes;
one with any other first key is released at once. Whitespace before a first call and between
or after calls is dropped; arguments are always a dict.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

from power.messages import ToolCall, ToolCallFunction

_ID_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    """`call_` and 8 random alphanumerics, as Ollama writes tool call ids."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class _Need(enum.Enum):
    MORE = enum.auto()  # undecided: hold the text
    FAIL = enum.auto()  # not a tool call: release as content


_NEED_MORE = _Need.MORE
_FAIL = _Need.FAIL
#: A parse outcome: undecided, not a call, or (characters consumed, [(name, arguments)]).
_Outcome = _Need | tuple[int, list[tuple[str, dict[str, Any]]]]

# ---------------------------------------------------------------- JSON helpers


_PLAIN_RUN = re.compile(r'[^"\\{}\[\]]+')
_STRING_RUN = re.compile(r'[^"\\]+')


class JsonScanner:
    """Finds where a JSON object/array starting at `start` ends, in text that grows at its end.

    `end(text)` resumes where the previous call stopped, so scanning a long value that arrives
    token by token costs linear time. Only brackets and strings are tracked; validity is checked
    later by `json.loads`. The caller must pass the same text each time, only ever extended.
    """

    __slots__ = ("start", "_pos", "_depth", "_in_string", "_escaped", "_end")

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self._pos = start
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._end = -1

    def end(self, text: str) -> int:
        """Index just past the value, or -1 if it is not closed yet."""
        if self._end >= 0:
            return self._end
        pos, size = self._pos, len(text)
        while pos < size:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    pos += 1
                    continue
                run = _STRING_RUN.match(text, pos)
                if run is not None:
                    pos = run.end()
                    continue
                self._escaped = text[pos] == "\\"
                self._in_string = text[pos] != '"'
                pos += 1
                continue
            run = _PLAIN_RUN.match(text, pos)
            if run is not None:
                pos = run.end()
                continue
            char = text[pos]
            pos += 1
            if char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    self._end = pos
                    return pos
        self._pos = pos
        return -1


def json_value_end(text: str, start: int = 0) -> int:
    """End index of the JSON object/array starting at `text[start]`, or -1 if not yet closed."""
    return JsonScanner(start).end(text)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _FAIL


def _arguments(value: Any) -> dict[str, Any] | None:
    """Arguments as a dict: objects as they are, JSON strings decoded, absent as {}."""
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        value = _loads(value)
    return value if isinstance(value, dict) else None


def calls_from_json(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """(name, arguments) pairs from a decoded call object or list of them; None if not calls."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict):
            return None
        function = item.get("function")
        if isinstance(function, dict):
            item = function
        name = item.get("name")
        raw_args = None
        for key in ("arguments", "parameters", "args", "input"):
            if key in item:
                raw_args = item[key]
                break
        arguments = _arguments(raw_args)
        if not isinstance(name, str) or not name or arguments is None:
            return None
        calls.append((name, arguments))
    return calls


#: First keys with which a bare JSON object may still be a tool call.
_CALL_FIRST_KEYS = frozenset(
    {"name", "function", "type", "id", "arguments", "parameters", "args", "index"}
)
_KEY_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FENCE_OPEN = re.compile(r"```(?:json)?[ \t]*\n?\s*")
_FENCE_CLOSE = re.compile(r"\s*```")


_KEY_WINDOW = 300  # a first key (and the whitespace before it) longer than this is no call


def _plausible_object_start(text: str, index: int) -> bool | None:
    """Can the object at `text[index]` be a call? None while its first key is incomplete."""
    window = text[index : index + _KEY_WINDOW]
    rest = window[1:].lstrip()
    if not rest:
        return None if len(window) < _KEY_WINDOW else False
    if rest[0] != '"':
        return False
    key = _KEY_STRING.match(rest)
    if key is None:
        return None if len(window) < _KEY_WINDOW else False
    if key.group(1) not in _CALL_FIRST_KEYS:
        return False
    after = rest[key.end() :].lstrip()
    if not after:
        return None if len(window) < _KEY_WINDOW else False
    return after[0] == ":"


def parse_json_calls(
    text: str,
    final: bool,
    known: set[str] | None,
    scanners: dict[int, JsonScanner] | None = None,
) -> _Outcome:
    """A JSON call value (object or list, maybe ```json-fenced) at the start of `text`.

    `known`: when given, every call must name one of these tools. `scanners`: a cache of
    resumable scanners the caller keeps while `text` only grows, so that each call is cheap.
    """
    if not text:
        return _FAIL if final else _NEED_MORE
    index = 0
    fenced = False
    if text.startswith("`"):
        if "```json".startswith(text):
            return _FAIL if final else _NEED_MORE
        fence = _FENCE_OPEN.match(text)
        if fence is None:
            return _FAIL
        index = fence.end()
        fenced = True
        if index >= len(text):
            return _FAIL if final else _NEED_MORE
    head = text[index]
    if head == "[":
        window = text[index + 1 : index + _KEY_WINDOW]
        element = window.lstrip()
        if element and element[0] != "{":
            return _FAIL
        if element:
            plausible = _plausible_object_start(text, index + 1 + len(window) - len(element))
        else:
            plausible = None if len(window) < _KEY_WINDOW - 1 else False
    elif head == "{":
        plausible = _plausible_object_start(text, index)
    else:
        return _FAIL
    if plausible is False:
        return _FAIL
    if scanners is None:
        scanners = {}
    scanner = scanners.setdefault(index, JsonScanner(index))
    end = scanner.end(text)
    if end < 0:
        return _FAIL if final else _NEED_MORE
    calls = calls_from_json(_loads(text[index:end]))
    if calls is None or (known is not None and any(name not in known for name, _ in calls)):
        return _FAIL
    if fenced:
        close = _FENCE_CLOSE.match(text, end)
        if close is None:
            tail = text[end:]
            if not final and (not tail.strip() or "```".startswith(tail.strip())):
                return _NEED_MORE
            return _FAIL
        end = close.end()
    return end, calls


# ---------------------------------------------------------------- tagged forms

_NAME = r"[A-Za-z0-9_.\-:/]+"
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)


def _function_tag_call(name: str, body: str) -> tuple[str, dict[str, Any]] | None:
    """Arguments of `<function=NAME>body</function>`: JSON, or `<parameter=K>v</parameter>`s."""
    body = body.strip()
    if not body:
        return name, {}
    if body.startswith("{"):
        arguments = _arguments(body)
        return (name, arguments) if arguments is not None else None
    params = _PARAMETER.findall(body)
    if not params or _PARAMETER.sub("", body).strip():
        return None
    arguments = {}
    for key, raw in params:
        value = raw.strip("\n")
        decoded = _loads(value.strip())
        arguments[key] = value if decoded is _FAIL else decoded
    return name, arguments


def _parse_function_tag(rest: str, final: bool) -> _Outcome:
    """After `<function=`: `NAME>` then a body up to `</function>`."""
    match = re.match(rf"({_NAME})>", rest)
    if match is None:
        if not final and re.fullmatch(rf"{_NAME}|", rest):
            return _NEED_MORE
        return _FAIL
    close = rest.find("</function>", match.end())
    if close < 0:
        if not final:
            return _NEED_MORE
        close = consumed = len(rest)
    else:
        consumed = close + len("</function>")
    call = _function_tag_call(match.group(1), rest[match.end() : close])
    return _FAIL if call is None else (consumed, [call])


def _parse_tool_call_tag(rest: str, final: bool) -> _Outcome:
    """After `<tool_call>`: JSON or a `<function=...>` block, up to `</tool_call>`."""
    close = rest.find("</tool_call>")
    if close < 0:
        if not final:
            return _NEED_MORE
        body, consumed = rest, len(rest)
    else:
        body, consumed = rest[:close], close + len("</tool_call>")
    body = body.strip()
    if body.startswith("<function="):
        outcome = _parse_function_tag(body[len("<function=") :], final=True)
        if isinstance(outcome, _Need) or body[len("<function=") + outcome[0] :].strip():
            return _FAIL
        return consumed, outcome[1]
    outcome = parse_json_calls(body, final=True, known=None)
    if isinstance(outcome, _Need) or body[outcome[0] :].strip():
        return _FAIL
    return consumed, outcome[1]


def _parse_json_after_tag(rest: str, final: bool) -> _Outcome:
    """After `<|python_tag|>` or `[TOOL_CALLS]` followed by JSON."""
    stripped = rest.lstrip()
    if not stripped:
        return _FAIL if final else _NEED_MORE
    outcome = parse_json_calls(stripped, final, known=None)
    if isinstance(outcome, _Need):
        return outcome
    return len(rest) - len(stripped) + outcome[0], outcome[1]


def _parse_mistral(rest: str, final: bool) -> _Outcome:
    """After `[TOOL_CALLS]`: a JSON list/object, or `NAME[ARGS]{...}` (with `[CALL_ID]id`)."""
    stripped = rest.lstrip()
    if not stripped:
        return _FAIL if final else _NEED_MORE
    if stripped[0] in "[{":
        return _parse_json_after_tag(rest, final)
    marker = stripped.find("[ARGS]")
    if marker < 0:
        if final or "{" in stripped or "\n" in stripped:
            return _FAIL
        return _NEED_MORE
    name = stripped[:marker].split("[CALL_ID]")[0]
    if not re.fullmatch(_NAME, name):
        return _FAIL
    args_at = marker + len("[ARGS]")
    args_text = stripped[args_at:].lstrip()
    if not args_text:
        return _FAIL if final else _NEED_MORE
    if args_text[0] != "{":
        return _FAIL
    end = json_value_end(args_text)
    if end < 0:
        return _FAIL if final else _NEED_MORE
    arguments = _arguments(args_text[:end])
    if arguments is None:
        return _FAIL
    consumed = len(rest) - len(args_text) + end
    return consumed, [(name, arguments)]


_DS_CALLS_END = "<｜tool▁calls▁end｜>"
_DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
_DS_CALL_END = "<｜tool▁call▁end｜>"
_DS_SEP = "<｜tool▁sep｜>"


def _parse_deepseek(rest: str, final: bool) -> _Outcome:
    """After `<｜tool▁calls▁begin｜>`: call blocks up to `<｜tool▁calls▁end｜>`."""
    close = rest.find(_DS_CALLS_END)
    if close < 0:
        if not final:
            return _NEED_MORE
        body, consumed = rest, len(rest)
    else:
        body, consumed = rest[:close], close + len(_DS_CALLS_END)
    calls = []
    for block in body.split(_DS_CALL_BEGIN)[1:]:
        block = block.split(_DS_CALL_END)[0]
        if _DS_SEP not in block:
            return _FAIL
        left, right = block.split(_DS_SEP, 1)
        if left.strip() in ("function", ""):  # R1: function<sep>NAME\n```json ... ```
            name, _, args_text = right.partition("\n")
        else:  # V3.1: NAME<sep>{...}
            name, args_text = left, right
        args_text = args_text.strip()
        fence = _FENCE_OPEN.match(args_text)
        if fence is not None:
            args_text = args_text[fence.end() :].rstrip().removesuffix("```")
        arguments = _arguments(args_text)
        if not name.strip() or arguments is None:
            return _FAIL
        calls.append((name.strip(), arguments))
    return (consumed, calls) if calls else _FAIL


_MARKERS: dict[str, Callable[[str, bool], _Outcome]] = {
    "<tool_call>": _parse_tool_call_tag,
    "<function=": _parse_function_tag,
    "[TOOL_CALLS]": _parse_mistral,
    "<|python_tag|>": _parse_json_after_tag,
    "<｜tool▁calls▁begin｜>": _parse_deepseek,
}
_MARKER_SIGNATURES = {
    "<tool_call>": ("<tool_call>",),
    "<function=": ("<function=",),
    "[TOOL_CALLS]": ("[TOOL_CALLS]",),
    "<|python_tag|>": ("<|python_tag|>",),
    "<｜tool▁calls▁begin｜>": ("tool▁calls▁begin", "tool▁call▁begin"),
}


def markers_for_hint(template_hint: str | None) -> tuple[str, ...]:
    """The tags to watch for, given a chat template (all of them when it names none)."""
    if template_hint:
        chosen = tuple(
            marker
            for marker, signatures in _MARKER_SIGNATURES.items()
            if any(signature in template_hint for signature in signatures)
        )
        if chosen:
            return chosen
    return tuple(_MARKERS)


# ---------------------------------------------------------------- the parser


class ToolCallMode(enum.Enum):
    PASSTHROUGH = enum.auto()  # no tools in the request
    JSON_ALLOWED = enum.auto()  # at the start, or right after a call: bare JSON may be a call
    TEXT = enum.auto()  # in prose: only tags start a call
    IN_TAG = enum.auto()  # after a tag's opening, waiting for the rest of the call


class ToolCallParser:
    """Streaming tool-call extraction; see the module docstring for the forms."""

    def __init__(
        self,
        tool_names: Iterable[str],
        template_hint: str | None = None,
        *,
        new_id: Callable[[], str] = new_tool_call_id,
    ) -> None:
        self.tool_names = set(tool_names)
        self.markers = markers_for_hint(template_hint)
        self.mode = ToolCallMode.JSON_ALLOWED if self.tool_names else ToolCallMode.PASSTHROUGH
        self.n_calls = 0
        self._new_id = new_id
        self._held = ""
        self._marker = ""
        #: resumable JSON scanners for the bare-JSON candidate now held (reset when it is decided)
        self._scanners: dict[int, JsonScanner] = {}

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add generated text; return (content, completed calls) decided so far."""
        if self.mode is ToolCallMode.PASSTHROUGH:
            return text, []
        self._held += text
        return self._run(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of generation: decide everything held (an unclosed tag is parsed as it stands)."""
        if self.mode is ToolCallMode.PASSTHROUGH:
            return "", []
        content, calls = self._run(final=True)
        held, self._held = self._held, ""
        if self.mode is ToolCallMode.TEXT or (
            self.mode is ToolCallMode.JSON_ALLOWED and self.n_calls == 0
        ):
            content += held
        self.mode = ToolCallMode.TEXT
        return content, calls

    # ------------------------------------------------------------------ internals

    def _run(self, final: bool) -> tuple[str, list[ToolCall]]:
        content: list[str] = []
        calls: list[ToolCall] = []
        while self._held and self._step(final, content, calls):
            pass
        return "".join(content), calls

    def _emit_calls(self, found: list[tuple[str, dict[str, Any]]], calls: list[ToolCall]) -> None:
        for name, arguments in found:
            function = ToolCallFunction(name=name, arguments=arguments, index=self.n_calls)
            calls.append(ToolCall(function=function, id=self._new_id()))
            self.n_calls += 1
        self.mode = ToolCallMode.JSON_ALLOWED
        self._scanners = {}

    def _step(self, final: bool, content: list[str], calls: list[ToolCall]) -> bool:
        """Advance once over the held text; True if another step may make progress."""
        held = self._held
        if self.mode is ToolCallMode.IN_TAG:
            outcome = _MARKERS[self._marker](held[len(self._marker) :], final)
            if outcome is _NEED_MORE:
                return False
            if outcome is _FAIL:
                content.append(self._marker)
                self._held = held[len(self._marker) :]
                self.mode = ToolCallMode.TEXT
                return True
            consumed, found = outcome
            self._held = held[len(self._marker) + consumed :]
            self._emit_calls(found, calls)
            return True
        if self.mode is ToolCallMode.JSON_ALLOWED:
            stripped = held.lstrip()
            if self.n_calls:
                stripped = stripped.lstrip(";,").lstrip()
            if not stripped:
                return False
            for marker in self.markers:
                if stripped.startswith(marker):
                    self._held, self._marker = stripped, marker
                    self.mode = ToolCallMode.IN_TAG
                    return True
            if any(marker.startswith(stripped) for marker in self.markers) and not final:
                return False
            if stripped[0] in "{[`":
                outcome = parse_json_calls(stripped, final, self.tool_names, self._scanners)
                if outcome is _NEED_MORE:
                    return False
                self._scanners = {}
                if outcome is not _FAIL:
                    consumed, found = outcome
                    self._held = stripped[consumed:]
                    self._emit_calls(found, calls)
                    return True
            self.mode = ToolCallMode.TEXT
            if self.n_calls:
                self._held = stripped  # whitespace after a call is dropped
            return True
        # TEXT: release prose up to the first tag, hold a possible partial tag at the end.
        first, first_marker = len(held), ""
        for marker in self.markers:
            index = held.find(marker)
            if 0 <= index < first:
                first, first_marker = index, marker
        if first_marker:
            if first:
                content.append(held[:first])
            self._held, self._marker = held[first:], first_marker
            self.mode = ToolCallMode.IN_TAG
            return True
        keep = 0 if final else max(_overlap(held, marker) for marker in self.markers)
        content.append(held[: len(held) - keep])
        self._held = held[len(held) - keep :]
        return False


def _overlap(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
