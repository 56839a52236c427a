"""The one exception every layer shares: a request that cannot be served, with its HTTP status.

A leaf module (it imports nothing from power) so that `power.options` and the engine can both
build on it. The HTTP edge answers any `EngineError` with its `status`.
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """A request power cannot serve (a 400 or 500 at the HTTP edge, as `status` says)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
