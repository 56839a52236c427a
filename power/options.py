"""The 28 generation and load options Ollama accepts, typed, with power's defaults.

One place defines them; the Modelfile parser (`PARAMETER`), the HTTP edge (`options` in a
request) and the engine all use this module. Values arrive as JSON (numbers, bools, strings,
lists) or as Modelfile text; `coerce_option` turns either into the declared type or raises
`OptionError` with a message fit for a 400 answer.

Defaults follow Ollama's documented ones. repeat_penalty is 1.1 as in Ollama's docs (newer
Ollama releases use 1.0); power keeps 1.1 because the docs and most Modelfiles assume it.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

log = logging.getLogger(__name__)


class OptionError(ValueError):
    """An option has a value of the wrong type or out of range (a 400 at the HTTP edge)."""


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
    """Every option power accepts; `None` means "not set, use the model's or power's default"."""

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

    def updated(self, values: dict[str, Any]) -> Options:
        """A copy with `values` (already coerced or raw JSON) applied; unknown keys are ignored."""
        new = attrs.evolve(self)
        for key, value in values.items():
            if key not in OPTION_TYPES:
                log.warning("ignoring unknown option %r", key)
                continue
            if value is None:
                continue
            setattr(new, key, coerce_option(key, value))
        return new

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

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce_option(name: str, value: Any) -> Any:
    """Convert a JSON value or Modelfile text to the option's type, or raise OptionError."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise OptionError(f"unknown option {name!r}")
    try:
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
        if kind is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                text = value.strip()
                return int(float(text)) if "." in text else int(text)
            raise TypeError
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError
    except (TypeError, ValueError):
        type_name = {list: "array of strings", bool: "bool", int: "int", float: "float"}[kind]
        raise OptionError(f"option {name!r} must be of type {type_name}, got {value!r}") from None


def parse_options(values: dict[str, Any] | None) -> dict[str, Any]:
    """Coerce a request's `options` object; unknown keys are dropped with a warning."""
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
