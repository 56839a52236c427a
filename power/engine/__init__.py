"""The inference engine: the only code that touches llama.cpp.

`load(path, options)` is the programmatic entry point (see `power.engine.model`).
"""

from power.engine.model import LoadedModel, LoadSpec, load
from power.engine.types import Chunk, DoneReason, EmbedResult, EngineError, GenerationParams

__all__ = [
    "Chunk",
    "DoneReason",
    "EmbedResult",
    "EngineError",
    "GenerationParams",
    "LoadSpec",
    "LoadedModel",
    "load",
]
