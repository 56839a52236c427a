"""The inference engine: the only code that touches llama.cpp.

`load(path, options)` is the programmatic entry point (see `power.engine.model`); pass it a
`PromptCache` (`cache = PromptCache(folder, max_bytes=...)`, then `await cache.open()`) to keep
long prompt prefixes on disk across loads and processes. The names
below are imported on first use, so that light modules (`power.engine.errors`, used by
`power.options`) can be imported without loading the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Chunk": "power.engine.types",
    "DoneReason": "power.engine.types",
    "EmbedResult": "power.engine.types",
    "EngineError": "power.engine.errors",
    "GenerationParams": "power.engine.types",
    "LoadSpec": "power.engine.loadspec",
    "LoadedModel": "power.engine.model",
    "PromptCache": "power.engine.promptcache",
    "load": "power.engine.model",
}

__all__ = [
    "Chunk",
    "DoneReason",
    "EmbedResult",
    "EngineError",
    "GenerationParams",
    "LoadSpec",
    "LoadedModel",
    "PromptCache",
    "load",
]

if TYPE_CHECKING:
    from power.engine.errors import EngineError
    from power.engine.loadspec import LoadSpec
    from power.engine.model import LoadedModel, load
    from power.engine.promptcache import PromptCache
    from power.engine.types import Chunk, DoneReason, EmbedResult, GenerationParams


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'power.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
