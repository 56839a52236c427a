"""Durations as Ollama's API spells them: `keep_alive` values in, nanosecond metrics out.

`keep_alive` arrives as a JSON number (seconds) or a string in Go's `time.ParseDuration`
syntax (`"5m"`, `"1h30m"`, `"300ms"`, `"-1m"`, `"0"`). power also takes a bare number in a
string (`"10"`, `"1.5"`, `"-1"`) as seconds, which Go rejects (`missing unit`) but users write.
A negative duration means "keep loaded forever" and is returned as `math.inf`.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Seconds per unit of Go's duration syntax.
_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek small letter mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_COMPONENT = re.compile(rf"({_NUMBER})([^\d.]+)")
_GO_DURATION = re.compile(rf"[-+]?(?:{_NUMBER}[^\d.]+)+")
_BARE_NUMBER = re.compile(rf"[-+]?{_NUMBER}(?:[eE][-+]?\d+)?")


def parse_go_duration(text: str) -> float:
    """Parse Go duration syntax (`"1h30m"`, `"-2.5s"`, `"0"`) into signed seconds.

    Raises ValueError naming the text when it is not a valid Go duration.
    """
    value = text.strip()
    if value in ("0", "+0", "-0"):
        return 0.0
    if not value or not _GO_DURATION.fullmatch(value):
        if _BARE_NUMBER.fullmatch(value):
            raise ValueError(f"missing unit in duration {text!r}")
        raise ValueError(f"invalid duration {text!r}")
    sign = -1.0 if value.startswith("-") else 1.0
    body = value.lstrip("+-")
    total = 0.0
    for number, unit in _COMPONENT.findall(body):
        seconds = _UNIT_SECONDS.get(unit)
        if seconds is None:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r}")
        total += float(number) * seconds
    return sign * total


def parse_keep_alive(value: Any) -> float | None:
    """A request's `keep_alive` in seconds: None if absent, `math.inf` for "forever".

    JSON numbers are seconds; strings are Go durations or bare numbers of seconds; any negative
    value means forever. Booleans, NaN, objects and malformed strings raise ValueError with a
    message fit for a 400 answer.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f"invalid keep_alive {value!r}: expected a number of seconds or a duration like '5m'"
        )
    if isinstance(value, str):
        text = value.strip()
        if _BARE_NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            try:
                seconds = parse_go_duration(text)
            except ValueError as err:
                raise ValueError(f"invalid keep_alive: {err}") from None
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ValueError("invalid keep_alive: NaN is not a duration")
    if seconds < 0:
        return math.inf
    return seconds


def seconds_to_ns(seconds: float) -> int:
    """Seconds (as from `time.monotonic()` differences) to integer nanoseconds for metrics."""
    return round(seconds * 1_000_000_000)


def format_go_duration(seconds: float) -> str:
    """Render seconds the way Go's `time.Duration.String` does: `"5m0s"`, `"1h30m0s"`, `"300ms"`.

    `math.inf` renders as `"-1"`, the value Ollama writes for "forever".
    """
    if math.isinf(seconds):
        return "-1"
    ns = round(seconds * 1_000_000_000)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns, 1_000)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{_trim(rest, 1_000_000_000)}s"


def _trim(value: int, unit: int) -> str:
    """`value / unit` as a decimal without trailing zeros (integer arithmetic, no rounding)."""
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"
