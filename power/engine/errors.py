"""The engine's exceptions. This module imports nothing from power, so that `power.options`
can build on `EngineError` without an import cycle."""

from __future__ import annotations


class EngineError(RuntimeError):
    """A request the engine cannot serve (a 400 or 500 at the HTTP edge, as `status` says)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class DecodeError(EngineError):
    """llama_decode refused a batch (bad token ids, no room in the KV cache...): the sequences
    of that batch fail, the others go on."""


class SamplingError(EngineError):
    """Sampling, detokenising or stop matching failed for one sequence (NaN logits, a grammar
    that allows nothing...): that sequence fails, the others go on."""
