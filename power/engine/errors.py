"""The engine's exceptions, refinements of the shared `power.errors.EngineError`."""

from __future__ import annotations

from power.errors import EngineError


class DecodeError(EngineError):
    """llama_decode refused a batch (bad token ids, no room in the KV cache...): the sequences
    of that batch fail, the others go on."""


class SamplingError(EngineError):
    """Sampling, detokenising or stop matching failed for one sequence (NaN logits, a grammar
    that allows nothing...): that sequence fails, the others go on."""


class ContextLost(EngineError):
    """The context can no longer be used (a split model's host process died with its worker):
    unlike a `DecodeError`, this stops the model's step loop, every sequence fails with its
    message, the instance becomes FAILED and the next request loads the model again."""
