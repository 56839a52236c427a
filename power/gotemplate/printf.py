"""Go's `fmt.Sprintf` for the template function `printf`.

Supported: flags `+ - # 0 space`, width and precision (digits or `*`), and the verbs
`%v %+v %#v %T %t %d %b %o %O %x %X %c %q %U %e %E %f %F %g %G %s %%`. Mistakes render the way
Go renders them: `%!d(string=hi)` for a wrong type, `%!d(MISSING)` for a missing operand,
`%!(EXTRA int=1)` for operands left over, `%!z(int=1)` for an unknown verb.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from power.gotemplate.values import (
    GoStruct,
    format_float_v,
    go_quote,
    kind_of,
    sprint_value,
    type_name,
)


@attrs.define
class _Spec:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    zero: bool = False
    space: bool = False
    width: int | None = None
    precision: int | None = None


def _pad(text: str, spec: _Spec, numeric: bool) -> str:
    if spec.width is None or len(text) >= spec.width:
        return text
    fill = spec.width - len(text)
    if spec.minus:
        return text + " " * fill
    if spec.zero and numeric and not text.lstrip("+- ").startswith(("I", "N")):
        sign = text[0] if text[:1] in ("+", "-", " ") else ""
        return sign + "0" * fill + text[len(sign) :]
    return " " * fill + text


def _bad(verb: str, arg: Any) -> str:
    if arg is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(arg)}={sprint_value(arg)})"


def _sign(negative: bool, spec: _Spec) -> str:
    if negative:
        return "-"
    if spec.plus:
        return "+"
    return " " if spec.space else ""


def _format_int(value: int, verb: str, spec: _Spec) -> str | None:
    magnitude = abs(value)
    if verb in ("d", "v"):
        digits = str(magnitude)
    elif verb == "b":
        digits = format(magnitude, "b")
    elif verb in ("o", "O"):
        digits = format(magnitude, "o")
    elif verb == "x":
        digits = format(magnitude, "x")
    elif verb == "X":
        digits = format(magnitude, "X")
    elif verb == "c":
        return chr(value) if 0 <= value <= 0x10FFFF else "\ufffd"
    elif verb == "q":
        return "'" + go_quote(chr(value) if 0 <= value <= 0x10FFFF else "\ufffd")[1:-1] + "'"
    elif verb == "U":
        text = f"U+{value:04X}"
        return text + (f" '{chr(value)}'" if spec.sharp else "")
    else:
        return None
    if spec.precision is not None:
        digits = digits.rjust(spec.precision, "0")
        if spec.precision == 0 and value == 0:
            digits = ""
    prefix = ""
    if verb == "O" or (spec.sharp and verb == "o" and not digits.startswith("0")):
        prefix = "0o" if verb == "O" else "0"
    elif spec.sharp and verb in ("x", "X"):
        prefix = "0" + verb
    elif spec.sharp and verb == "b":
        prefix = "0b"
    return _sign(value < 0, spec) + prefix + digits


def _format_float(value: float, verb: str, spec: _Spec) -> str | None:
    if verb not in "eEfFgGv":
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    negative = math.copysign(1.0, value) < 0
    magnitude = abs(value)
    if verb in ("v", "g", "G") and spec.precision is None:
        text = format_float_v(magnitude, upper=verb == "G")
    else:
        precision = 6 if spec.precision is None else spec.precision
        py_verb = {"v": "g", "F": "f"}.get(verb, verb)
        flags = "#" if spec.sharp else ""
        text = format(magnitude, f"{flags}.{precision}{py_verb}")
    return _sign(negative, spec) + text


def _format_string(value: str, verb: str, spec: _Spec) -> str | None:
    if spec.precision is not None:
        value = value[: spec.precision]
    if verb in ("s", "v"):
        return value
    if verb == "q":
        return go_quote(value)
    if verb in ("x", "X"):
        hex_text = value.encode("utf-8").hex()
        return hex_text.upper() if verb == "X" else hex_text
    return None


def _stringer_text(arg: Any) -> str | None:
    go_string = getattr(arg, "go_string", None)
    if callable(go_string):
        return go_string()
    if isinstance(arg, GoStruct) and arg.stringer is not None:
        return arg.stringer(arg)
    return None


def format_one(arg: Any, verb: str, spec: _Spec) -> str:
    """One operand under one verb, padded to the width."""
    if verb == "T":
        return _pad(type_name(arg), spec, False)
    kind = kind_of(arg)
    text: str | None
    numeric = False
    stringer_text = _stringer_text(arg) if verb in "vsqxX" else None
    if stringer_text is not None:
        text = _format_string(stringer_text, "s" if verb == "v" else verb, spec)
    elif kind == "bool":
        text = ("true" if arg else "false") if verb in ("t", "v") else None
    elif kind == "int":
        text, numeric = _format_int(arg, verb, spec), True
    elif kind == "float64":
        text, numeric = _format_float(arg, verb, spec), True
    elif kind == "string":
        text = go_quote(arg) if verb == "v" and spec.sharp else _format_string(arg, verb, spec)
    elif isinstance(arg, bytes) and verb in ("s", "q", "x", "X"):
        text = _format_string(arg.decode("utf-8", errors="replace"), verb, spec)
    elif isinstance(arg, list | tuple | bytes):
        inner = attrs.evolve(spec, width=None)
        text = "[" + " ".join(format_one(item, verb, inner) for item in arg) + "]"
    elif verb == "v" or (verb == "s" and arg is not None and not callable(arg)):
        text = sprint_value(arg, plus=spec.plus)
    else:
        text = None
    if text is None:
        return _bad(verb, arg)
    return _pad(text, spec, numeric)


def go_sprintf(template: str, *args: Any) -> str:
    """Go's `fmt.Sprintf`."""
    out: list[str] = []
    i_arg = 0
    i = 0
    n = len(template)
    while i < n:
        ch = template[i]
        if ch != "%":
            j = template.find("%", i)
            j = n if j < 0 else j
            out.append(template[i:j])
            i = j
            continue
        i += 1
        spec = _Spec()
        while i < n and template[i] in "+-# 0":
            flag = template[i]
            spec.plus |= flag == "+"
            spec.minus |= flag == "-"
            spec.sharp |= flag == "#"
            spec.zero |= flag == "0"
            spec.space |= flag == " "
            i += 1
        if i < n and template[i] == "*":
            i += 1
            if i_arg < len(args) and isinstance(args[i_arg], int):
                spec.width = args[i_arg]
                if spec.width < 0:
                    spec.minus, spec.width = True, -spec.width
            else:
                out.append("%!(BADWIDTH)")
            i_arg += 1
        else:
            start = i
            while i < n and template[i].isdigit():
                i += 1
            if i > start:
                spec.width = int(template[start:i])
        if i < n and template[i] == ".":
            i += 1
            if i < n and template[i] == "*":
                i += 1
                if i_arg < len(args) and isinstance(args[i_arg], int) and args[i_arg] >= 0:
                    spec.precision = args[i_arg]
                else:
                    out.append("%!(BADPREC)")
                i_arg += 1
            else:
                start = i
                while i < n and template[i].isdigit():
                    i += 1
                spec.precision = int(template[start:i] or "0")
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = template[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if i_arg >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[i_arg]
        i_arg += 1
        if verb not in "vTtdboOxXcqUeEfFgGs":
            out.append(_bad(verb, arg))
            continue
        out.append(format_one(arg, verb, spec))
    if i_arg < len(args):
        extra = ", ".join(
            "<nil>" if a is None else f"{type_name(a)}={sprint_value(a)}" for a in args[i_arg:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)
