"""Go's template builtins `len`, `index`, `slice`, `html`, `js`, `urlquery`, `call`, and the
helpers Ollama adds to its templates (`json`, `currentDate`, `yesterdayDate`, `toTypeScriptType`).

Each raises `GoError` where Go's returns an error; the executor adds the template position.
"""

from __future__ import annotations

import datetime
import urllib.parse
from typing import Any

from power.gotemplate.values import GoError, GoStruct, go_sprint, marshal_json, type_name

# ---------------------------------------------------------------- len, index, slice


def go_len(item: Any) -> int:
    if item is None:
        raise GoError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8"))
    if isinstance(item, bytes | list | tuple | dict):
        return len(item)
    raise GoError(f"len of type {type_name(item)}")


def _index_value(index: Any, cap: int) -> int:
    if not isinstance(index, int) or isinstance(index, bool):
        raise GoError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise GoError(f"index out of range: {index}")
    return index


def go_index(item: Any, *indexes: Any) -> Any:
    """Go's `index`: `index x 1 2` is `x[1][2]`; a missing map key gives nil."""
    for index in indexes:
        if item is None:
            raise GoError("index of untyped nil")
        if isinstance(item, dict):
            item = item.get(index)
        elif isinstance(item, str | bytes | list | tuple):
            seq = item.encode("utf-8") if isinstance(item, str) else item
            i = _index_value(index, len(seq))
            if i == len(seq):
                raise GoError(f"index out of range: {i}")
            item = seq[i]
        else:
            raise GoError(f"can't index item of type {type_name(item)}")
    return item


def go_slice(item: Any, *indexes: Any) -> Any:
    """Go's `slice`: `slice x 1 2` is `x[1:2]`; strings are sliced by bytes."""
    if item is None:
        raise GoError("slice of untyped nil")
    if len(indexes) > 3:
        raise GoError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise GoError("cannot 3-index slice a string")
        seq: Any = item.encode("utf-8")
    elif isinstance(item, bytes | list | tuple):
        seq = item
    else:
        raise GoError(f"can't slice item of type {type_name(item)}")
    bounds = [0, len(seq)]
    for n, index in enumerate(indexes):
        value = _index_value(index, len(seq))
        if n < 2:
            bounds[n] = value
    if bounds[0] > bounds[1]:
        raise GoError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and indexes[2] < bounds[1]:
        raise GoError(f"invalid slice index: {bounds[1]} > {indexes[2]}")
    result = seq[bounds[0] : bounds[1]]
    if isinstance(item, str):
        return result.decode("utf-8", errors="replace")
    return result


# ---------------------------------------------------------------- escaping


def _args_string(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return go_sprint(*args)


def go_html(*args: Any) -> str:
    text = _args_string(args)
    table = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;", "\0": "\ufffd"}
    return "".join(table.get(ch, ch) for ch in text)


def go_js(*args: Any) -> str:
    text = _args_string(args)
    table = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E"}
    table |= {"&": "\\u0026", "=": "\\u003D"}
    out = []
    for ch in text:
        if ch in table:
            out.append(table[ch])
        elif ord(ch) < 0x20 or (ord(ch) >= 0x80 and not ch.isprintable()):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def go_urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_args_string(args), safe="")


def go_call(function: Any, *args: Any) -> Any:
    if not callable(function):
        raise GoError(f"non-function of type {type_name(function)}")
    return function(*args)


# ---------------------------------------------------------------- Ollama's helpers


def ollama_json(value: Any) -> str:
    """Ollama's `json`: Go's json.Marshal, an empty string when it fails."""
    try:
        return marshal_json(value)
    except GoError:
        return ""


def _check_strings(args: tuple[Any, ...]) -> None:
    for arg in args:
        if not isinstance(arg, str):
            raise GoError(f"wrong type for value; expected string; got {type_name(arg)}")


def ollama_current_date(*args: Any) -> str:
    """Ollama's `currentDate`: today's local date as YYYY-MM-DD (a format argument is ignored)."""
    _check_strings(args)
    return datetime.date.today().isoformat()


def ollama_yesterday_date(*args: Any) -> str:
    _check_strings(args)
    return (datetime.date.today() - datetime.timedelta(days=1)).isoformat()


_TYPESCRIPT_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def ollama_to_typescript_type(value: Any) -> str:
    """Ollama's `toTypeScriptType` of a tool property (`GoStruct` named ToolProperty), else `any`."""
    if not isinstance(value, GoStruct) or not value.type_name.endswith("ToolProperty"):
        return "any"
    any_of = value.fields.get("AnyOf") or []
    if any_of:
        return " | ".join(ollama_to_typescript_type(p) for p in any_of)
    types = value.fields.get("Type") or []
    if not types:
        return "any"
    return " | ".join(_TYPESCRIPT_TYPES.get(t, "any") for t in types)
