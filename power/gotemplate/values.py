"""Go value semantics for the template renderer: printing, JSON, truth and comparison.

How Python values stand for Go values in `power.gotemplate.template`:

| Python                         | Go                                                        |
|--------------------------------|-----------------------------------------------------------|
| `None`                         | nil (prints `<no value>` from an action, `<nil>` in fmt)  |
| `bool`, `int`, `float`, `str`  | bool, int, float64, string (`len` of a string counts UTF-8 bytes) |
| `bytes`                        | `[]byte`                                                  |
| `list`, `tuple`                | a slice                                                   |
| `dict`                         | a map: `.key` looks the key up, a missing key is nil      |
| `GoStruct`                     | a struct with named fields, JSON tags and an optional `String()` |
| any other object               | a struct: `.Name` reads attribute `Name`, else `name` in snake_case; a callable attribute is a method |

Objects may also carry two hooks, duck-typed: `go_string() -> str` is Go's `fmt.Stringer` (used when a
value is printed) and `go_json() -> str` is Go's `json.Marshaler` (returns JSON text).

Errors raised by builtins are `GoError` (see also `power.gotemplate.funcs`); the executor adds
the template position.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs


class GoError(Exception):
    """A Go runtime error raised while executing a builtin (the executor adds the position)."""


@attrs.define(eq=False)
class GoStruct:
    """A Go struct value as templates see it.

    `fields` maps Go field names (in declaration order) to values. `json_tags` maps a Go field name
    to its JSON tag (`"name"` or `"name,omitempty"`); `None` marshals every field under its Go name
    (a struct without tags), and a field missing from a given mapping is not marshalled.
    `stringer`, when set, is the struct's `String()` method. `pointer` prints `&{...}` like Go does
    for a pointer to a struct.
    """

    type_name: str
    fields: dict[str, Any]
    json_tags: Mapping[str, str] | None = None
    stringer: Callable[[GoStruct], str] | None = None
    pointer: bool = False

    def go_json(self) -> str:
        parts = []
        for name, value in self.fields.items():
            if self.json_tags is None:
                key, omitempty = name, False
            elif name in self.json_tags:
                key, _, option = self.json_tags[name].partition(",")
                omitempty = option == "omitempty"
            else:
                continue
            if omitempty and _json_empty(value):
                continue
            parts.append(f"{quote_json_string(key)}:{marshal_json(value)}")
        return "{" + ",".join(parts) + "}"


class JsonStringList(list):
    """A Go slice type whose `String()` is its JSON; `nil=True` stands for a nil slice."""

    def __init__(self, items: Any = (), *, nil: bool = False) -> None:
        super().__init__(items)
        self.nil = nil

    def go_json(self) -> str:
        if self.nil:
            return "null"
        return "[" + ",".join(marshal_json(item) for item in self) + "]"

    def go_string(self) -> str:
        return self.go_json()


class NilSlice(tuple):
    """An empty nil Go slice: prints `[]`, marshals to `null`."""

    def go_json(self) -> str:
        return "null"


class JsonStringMap(dict):
    """A Go map type whose `String()` is its JSON (keys sorted; `{}` when empty or nil).

    `nil=True` stands for a nil map: it marshals to `null` but still prints `{}`.
    """

    def __init__(self, items: Any = (), *, nil: bool = False) -> None:
        super().__init__(items)
        self.nil = nil

    def go_json(self) -> str:
        return "null" if self.nil else _marshal_map(self)

    def go_string(self) -> str:
        return _marshal_map(self)


class OrderedJsonMap(dict):
    """A map that keeps insertion order in JSON (Ollama's ordered maps); prints as its JSON."""

    def go_json(self) -> str:
        items = (f"{quote_json_string(str(k))}:{marshal_json(v)}" for k, v in self.items())
        return "{" + ",".join(items) + "}"

    def go_string(self) -> str:
        return self.go_json()


def _json_empty(value: Any) -> bool:
    if isinstance(value, OrderedJsonMap):
        return False  # stands for a non-nil pointer: never "empty" to omitempty
    if value is None or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value) == 0
    return False


# ---------------------------------------------------------------- truth and kinds


def is_true(value: Any) -> bool:
    """Go's template truth: false, 0, nil and empty strings, slices and maps are false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | complex):
        return value != 0
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value) > 0
    return True


def kind_of(value: Any) -> str:
    """The Go kind name used in comparisons and error messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "other"


def type_name(value: Any) -> str:
    """A Go-like type name, for `%T` and error messages."""
    match value:
        case None:
            return "<nil>"
        case bool():
            return "bool"
        case int():
            return "int"
        case float():
            return "float64"
        case str():
            return "string"
        case bytes():
            return "[]uint8"
        case GoStruct():
            return ("*" if value.pointer else "") + value.type_name
        case dict():
            return "map[string]interface {}"
        case list() | tuple():
            return "[]interface {}"
    return type(value).__name__


# ---------------------------------------------------------------- floats


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of abs(value) and the decimal point position (0.DIGITS x 10^dp)."""
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    if not stripped:
        return "0", 1
    dp = len(stripped) + int(exponent or 0) - len(frac_part)
    return stripped.rstrip("0"), dp


def _exp_form(digits: str, dp: int, e_char: str = "e", min_exp_digits: int = 2) -> str:
    exp = dp - 1 if digits != "0" else 0
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exp < 0 else "+"
    return f"{mantissa}{e_char}{sign}{abs(exp):0{min_exp_digits}d}"


def _fixed_form(digits: str, dp: int) -> str:
    if digits == "0":
        return "0"
    if dp <= 0:
        return "0." + "0" * -dp + digits
    if dp >= len(digits):
        return digits + "0" * (dp - len(digits))
    return digits[:dp] + "." + digits[dp:]


def _special_float(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


def format_float_v(value: float, upper: bool = False) -> str:
    """Go's `%v`/`%g` for a float64: shortest digits, exponent form below 1e-4 or from 1e6."""
    special = _special_float(value)
    if special is not None:
        return special
    digits, dp = _shortest_digits(value)
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    exp = dp - 1
    if digits != "0" and (exp < -4 or exp >= 6):
        body = _exp_form(digits, dp, "E" if upper else "e")
    else:
        body = _fixed_form(digits, dp)
    return sign + body


def format_float_json(value: float) -> str:
    """Go's encoding/json float64 format."""
    if math.isnan(value) or math.isinf(value):
        raise GoError(f"json: unsupported value: {_special_float(value)}")
    digits, dp = _shortest_digits(value)
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        return sign + _exp_form(digits, dp, "e", 1)
    return sign + _fixed_form(digits, dp)


# ---------------------------------------------------------------- printing


def sprint_value(value: Any, *, depth: int = 0, plus: bool = False) -> str:
    """Go's `fmt` `%v` of one value (`plus` is `%+v`: struct field names)."""
    if value is None:
        return "<nil>"
    go_string = getattr(value, "go_string", None)
    if callable(go_string):
        return go_string()
    if isinstance(value, GoStruct) and value.stringer is not None:
        return value.stringer(value)
    match value:
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float():
            return format_float_v(value)
        case str():
            return value
        case bytes():
            return "[" + " ".join(str(b) for b in value) + "]"
        case GoStruct():
            items = (
                (f"{k}:" if plus else "") + sprint_value(v, depth=depth + 1, plus=plus)
                for k, v in value.fields.items()
            )
            return ("&" if value.pointer and depth == 0 else "") + "{" + " ".join(items) + "}"
        case dict():
            items = (
                f"{sprint_value(k, depth=depth + 1)}:{sprint_value(v, depth=depth + 1, plus=plus)}"
                for k, v in sorted_items(value)
            )
            return "map[" + " ".join(items) + "]"
        case list() | tuple():
            return "[" + " ".join(sprint_value(v, depth=depth + 1, plus=plus) for v in value) + "]"
    if attrs.has(type(value)):
        fields = attrs.fields(type(value))
        items = (
            (f"{f.name}:" if plus else "") + sprint_value(getattr(value, f.name), depth=depth + 1)
            for f in fields
        )
        return "{" + " ".join(items) + "}"
    return str(value)


def sorted_items(mapping: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    """A map's items in Go's order (keys sorted; numbers before strings if mixed)."""

    def key(item: tuple[Any, Any]) -> tuple[int, Any]:
        k = item[0]
        if isinstance(k, int | float) and not isinstance(k, bool):
            return (0, k)
        return (1, str(k))

    return sorted(mapping.items(), key=key)


def go_sprint(*args: Any) -> str:
    """Go's `fmt.Sprint`: spaces between operands when neither side is a string."""
    out = []
    previous_is_string = True
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not previous_is_string:
            out.append(" ")
        out.append(sprint_value(arg))
        previous_is_string = is_string
    return "".join(out)


def go_sprintln(*args: Any) -> str:
    """Go's `fmt.Sprintln`: operands always separated by spaces, then a newline."""
    return " ".join(sprint_value(arg) for arg in args) + "\n"


def go_quote(text: str) -> str:
    """Go's `strconv.Quote`."""
    out = ['"']
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    escapes |= {"\v": "\\v", "\\": "\\\\", '"': '\\"'}
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) > 0xFFFF:
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    out.append('"')
    return "".join(out)


# ---------------------------------------------------------------- JSON


_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_JSON_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def quote_json_string(text: str) -> str:
    """A JSON string as Go's json.Marshal writes it (HTML-safe: `<`, `>`, `&` escaped)."""

    def escape(match: re.Match[str]) -> str:
        ch = match.group(0)
        return _JSON_ESCAPES.get(ch) or f"\\u{ord(ch):04x}"

    return '"' + _JSON_NEEDS_ESCAPE.sub(escape, text) + '"'


def marshal_json(value: Any) -> str:
    """Go's `json.Marshal`: compact, map keys sorted, HTML characters escaped."""
    go_json = getattr(value, "go_json", None)
    if callable(go_json):
        return go_json()
    match value:
        case None:
            return "null"
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float():
            return format_float_json(value)
        case str():
            return quote_json_string(value)
        case bytes():
            return quote_json_string(base64.b64encode(value).decode("ascii"))
        case dict():
            return _marshal_map(value)
        case list() | tuple():
            return "[" + ",".join(marshal_json(v) for v in value) + "]"
    if attrs.has(type(value)):
        fields = attrs.fields(type(value))
        items = (
            f"{quote_json_string(f.name)}:{marshal_json(getattr(value, f.name))}" for f in fields
        )
        return "{" + ",".join(items) + "}"
    raise GoError(f"json: unsupported type: {type_name(value)}")


def _marshal_map(value: Mapping[Any, Any]) -> str:
    items = (
        f"{quote_json_string(str(k))}:{marshal_json(v)}"
        for k, v in sorted(value.items(), key=lambda item: str(item[0]))
    )
    return "{" + ",".join(items) + "}"


# ---------------------------------------------------------------- comparison


_BAD_COMPARISON = "incompatible types for comparison"


def go_eq(arg1: Any, *args: Any) -> bool:
    """Go's `eq`: true if arg1 equals any of the other arguments."""
    if not args:
        raise GoError("missing argument for comparison")
    kind1 = kind_of(arg1)
    for arg in args:
        kind2 = kind_of(arg)
        if kind1 != kind2:
            if arg1 is not None and arg is not None:
                raise GoError(_BAD_COMPARISON)
            continue
        if kind1 == "other":
            if isinstance(arg1, list | dict) or isinstance(arg, list | dict):
                raise GoError(f"non-comparable type {sprint_value(arg)}: {type_name(arg)}")
            if arg1 is arg or arg1 == arg:
                return True
        elif arg1 == arg:
            return True
    return False


def go_ne(arg1: Any, arg2: Any) -> bool:
    return not go_eq(arg1, arg2)


def go_lt(arg1: Any, arg2: Any) -> bool:
    kind1, kind2 = kind_of(arg1), kind_of(arg2)
    if kind1 not in ("int", "float64", "string") or kind2 not in ("int", "float64", "string"):
        raise GoError("invalid type for comparison")
    if kind1 != kind2:
        raise GoError(_BAD_COMPARISON)
    return arg1 < arg2


def go_le(arg1: Any, arg2: Any) -> bool:
    return go_lt(arg1, arg2) or go_eq(arg1, arg2)


def go_gt(arg1: Any, arg2: Any) -> bool:
    return not go_le(arg1, arg2)


def go_ge(arg1: Any, arg2: Any) -> bool:
    return not go_lt(arg1, arg2)


def go_not(arg: Any) -> bool:
    return not is_true(arg)
