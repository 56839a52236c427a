"""A lifecycle is an `Enum` plus the set of transitions allowed between its states.

Each stateful engine object (a generation, a model instance) keeps its state in one attribute and
changes it only through its own `_move(to)`, which calls `check_transition`: an illegal move is a
bug and raises at once instead of leaving a half-updated object behind.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class IllegalTransition(RuntimeError):
    """A lifecycle was asked to make a move its diagram does not have (a bug in the engine)."""


def check_transition(
    owner: str,
    allowed: Mapping[enum.Enum, frozenset[enum.Enum]],
    current: enum.Enum,
    to: enum.Enum,
) -> None:
    """Raise IllegalTransition unless `current -> to` is one of `allowed`'s edges."""
    if to not in allowed.get(current, frozenset()):
        raise IllegalTransition(f"{owner}: illegal transition {current.name} -> {to.name}")
