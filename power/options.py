"""The generation and load options Ollama accepts (and power's `draft_num_predict`), typed, range-checked, with power's defaults.

One place defines them; the Modelfile parser (`PARAMETER`), the HTTP edge (`options` in a
request), the CLI and the engine all use this module. Values arrive as JSON (numbers, bools,
strings, lists) or as Modelfile text; `coerce_option` turns either into the declared type and
checks its range, or raises `OptionError` with a message that names the option (a 400 at the
HTTP edge). `parse_options` is the one loop over a whole `options` object; `Options.updated`
applies its result.

The rules (`RULES` below, one line per option) keep every meaning Ollama and llama.cpp give a
value: `top_k` <= 0 is off, `num_predict` -1 is unbounded and -2 fills the context,
`repeat_last_n` -1 is num_ctx and 0 is off, a negative `seed` is random, `mirostat` is 0, 1 or 2,
`num_gpu` -1 offloads every layer, `num_thread` 0 is the default, a temperature <= 0 is greedy.
Every float must be finite (Python's json accepts NaN and Infinity). Ranges that Ollama does not
document are generous (the sampler stays robust inside them anyway) but exclude what can only be
a client's bug. Integers must fit a signed 64-bit integer, as in Ollama (Go's `int`).

What the parser cannot know without the model (its trained context, how many sequences share the
context) is settled when the model is loaded (`power.engine.loadspec`): small or oversized
`num_ctx` values and a `num_batch` below the number of parallel sequences are adjusted there,
with a log line, and never reach a llama.cpp assertion.

Defaults follow Ollama's documented ones. repeat_penalty is 1.1 as in Ollama's docs (newer
Ollama releases use 1.0); power keeps 1.1 because the docs and most Modelfiles assume it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs

from power.errors import EngineError

log = logging.getLogger(__name__)


class OptionError(EngineError, ValueError):
    """An option has a value of the wrong type or out of range: a 400 at the HTTP edge.

    It is an `EngineError` with status 400 (so any caller that turns EngineError into an
    answer answers 400) and a `ValueError` (as it always was)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400)


#: Options that change how the model is loaded: a different value forces a reload.
LOAD_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "numa",
        "num_thread",
        "num_thread_batch",
        "flash_attention",
    }
)


@attrs.define(slots=True)
class Options:
    """Every option power accepts; `None` means "not set, use the model's or power's default".

    Constructing an `Options` directly does not validate it (it is a plain record); values from
    outside go through `parse_options`/`updated`, and the engine calls `check()` on what it is
    given programmatically."""

    # sampling
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    typical_p: float = 1.0
    tfs_z: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    penalize_newline: bool = True
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    # generation control
    num_predict: int = -1
    num_keep: int = 4
    stop: list[str] = attrs.field(factory=list)
    #: speculative decoding: the most draft tokens verified per step (prompt lookup, or the
    #: model's DRAFT model); 0 turns speculation off for the request
    draft_num_predict: int = 32
    # load-time
    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    use_mlock: bool = False
    numa: bool = False
    num_thread: int = 0
    num_thread_batch: int = 0
    flash_attention: bool | None = None

    def load_key(self) -> tuple:
        """The values that decide whether a loaded instance can serve a request."""
        return tuple(getattr(self, name) for name in sorted(LOAD_OPTIONS))

    def updated(self, values: dict[str, Any] | None) -> Options:
        """A copy with `values` (raw JSON, Modelfile text or already parsed) applied.

        Unknown keys are ignored with a warning; a bad value raises `OptionError`."""
        return attrs.evolve(self, **parse_options(values))

    def check(self) -> Options:
        """Raise `OptionError` unless every field passes its rule; returns self."""
        for name in OPTION_TYPES:
            value = getattr(self, name)
            if value is None:
                continue
            coerce_option(name, value)
        return self

    def non_default(self) -> dict[str, Any]:
        """Options whose value differs from power's default, for display and round-trips."""
        base = Options()
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(Options)
            if getattr(self, f.name) != getattr(base, f.name)
        }


OPTION_TYPES: dict[str, type] = {}
for _field in attrs.fields(Options):
    _t = _field.type if isinstance(_field.type, str) else str(_field.type)
    if _t.startswith("list"):
        OPTION_TYPES[_field.name] = list
    elif "bool" in _t:
        OPTION_TYPES[_field.name] = bool
    elif "float" in _t:
        OPTION_TYPES[_field.name] = float
    else:
        OPTION_TYPES[_field.name] = int


@attrs.frozen
class Rule:
    """The accepted values of a numeric option: `low <= value <= high` (None: unbounded), or
    exactly one of `choices`; `meaning` completes the error message."""

    low: float | None = None
    high: float | None = None
    choices: tuple[int, ...] = ()
    meaning: str = ""

    def check(self, name: str, value: float) -> None:
        if self.choices:
            if value not in self.choices:
                allowed = ", ".join(str(c) for c in self.choices)
                raise OptionError(f"option {name!r} must be one of {allowed}, got {value!r}")
            return
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            if self.high is None:
                bound = f"at least {self.low:g}"
            elif self.low is None:
                bound = f"at most {self.high:g}"
            else:
                bound = f"between {self.low:g} and {self.high:g}"
            extra = f" ({self.meaning})" if self.meaning else ""
            raise OptionError(f"option {name!r} must be {bound}, got {value!r}{extra}")


#: Every numeric option's accepted values (booleans and `stop` need no rule beyond their type).
RULES: dict[str, Rule] = {
    "temperature": Rule(meaning="<= 0 is greedy"),
    "top_p": Rule(0.0, 1.0),
    "top_k": Rule(meaning="<= 0 turns top_k off"),
    "min_p": Rule(0.0, 1.0),
    "typical_p": Rule(0.0, 1.0, meaning="1 turns it off"),
    "tfs_z": Rule(0.0, None, meaning=">= 1 turns it off"),
    "repeat_penalty": Rule(0.0, 100.0, meaning="1 turns it off"),
    "repeat_last_n": Rule(-1, None, meaning="-1 is num_ctx, 0 turns penalties off"),
    "frequency_penalty": Rule(-100.0, 100.0),
    "presence_penalty": Rule(-100.0, 100.0),
    "mirostat": Rule(choices=(0, 1, 2)),
    "mirostat_tau": Rule(0.0, 100.0),
    "mirostat_eta": Rule(0.0, 10.0),
    "seed": Rule(meaning="a negative seed is random"),
    "num_predict": Rule(-2, None, meaning="-1 is unbounded, -2 fills the context"),
    "num_keep": Rule(-1, None, meaning="-1 keeps as much as possible"),
    "draft_num_predict": Rule(0, 64, meaning="0 turns speculative decoding off"),
    "num_ctx": Rule(0, None),
    "num_batch": Rule(1, None),
    "num_gpu": Rule(-1, None, meaning="-1 offloads every layer"),
    "main_gpu": Rule(0, None),
    "num_thread": Rule(0, None, meaning="0 is the default"),
    "num_thread_batch": Rule(0, None, meaning="0 is the default"),
}
assert set(RULES) == {n for n, t in OPTION_TYPES.items() if t in (int, float)}

INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_TYPE_NAMES = {list: "array of strings", bool: "bool", int: "int", float: "float"}


def _coerce(kind: type, value: Any) -> Any:
    """`value` as `kind`, or TypeError/ValueError/OverflowError."""
    if kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeError
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise TypeError
    if isinstance(value, bool):
        raise TypeError
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            if "." in text or "e" in text.lower():
                return int(float(text))  # Modelfile text such as "2048.0" (truncated, as before)
            return int(text)
        raise TypeError
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise TypeError


def coerce_option(name: str, value: Any) -> Any:
    """Convert a JSON value or Modelfile text to the option's type and check its range, or raise
    OptionError naming the option."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise OptionError(f"unknown option {name!r}")
    try:
        typed = _coerce(kind, value)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(
            f"option {name!r} must be of type {_TYPE_NAMES[kind]}, got {value!r}"
        ) from None
    if kind is float and not math.isfinite(typed):
        raise OptionError(f"option {name!r} must be a finite number, got {value!r}")
    if kind is int and not INT_MIN <= typed <= INT_MAX:
        raise OptionError(f"option {name!r} is out of range, got {value!r}")
    rule = RULES.get(name)
    if rule is not None:
        rule.check(name, typed)
    return typed


def parse_options(values: dict[str, Any] | None) -> dict[str, Any]:
    """Coerce and check a request's `options` object: the one option-parsing loop.

    Unknown keys are dropped with a warning (as Ollama does); null values are skipped (the
    option keeps its default); a bad value raises OptionError."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise OptionError("options must be an object")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in OPTION_TYPES:
            log.warning("ignoring unknown option %r", key)
            continue
        if value is None:
            continue
        out[key] = coerce_option(key, value)
    return out
