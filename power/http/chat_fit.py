"""Chat truncation by whole messages, as Ollama's `chatPrompt` does (server/prompt.go).

When a conversation's prompt does not fit the context (`num_ctx` of one sequence, less the room
for one generated token) and the request allows truncation (`truncate`, on by default), old
messages are dropped from the front until it fits: the system messages among the dropped ones
are kept, and so is the last message whatever its length (the engine then cuts its tokens, keeping
`num_keep` and the end, and the final chunk says `prompt_truncated`). `truncate: false` leaves
the conversation whole, and a prompt that does not fit is a 400 from the engine.

Ollama tries every start index in order, rendering and tokenizing each time; power bisects (a
prompt only gets shorter as messages go), so a conversation of n messages costs about log2(n)
renders. The caller renders and tokenizes (`attempt`); this module only decides which messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from power.messages import Message

T = TypeVar("T")


def kept_messages(messages: list[Message], start: int) -> list[Message]:
    """The conversation from `messages[start]` on, after the system messages before it."""
    return [m for m in messages[:start] if m.role == "system"] + messages[start:]


async def drop_old_messages(
    messages: list[Message],
    attempt: Callable[[list[Message]], Awaitable[T]],
    fits: Callable[[T], bool],
) -> tuple[T, int]:
    """`(attempt(kept), start)` for the smallest `start` in 1..len-1 whose kept conversation
    (`kept_messages`) `fits`, or for the last message alone when none does. For a conversation
    whose whole prompt was found too long (start 0); `messages` holds at least two."""
    lo, hi = 1, len(messages) - 1
    found: tuple[T, int] | None = None
    while lo < hi:
        middle = (lo + hi) // 2
        result = await attempt(kept_messages(messages, middle))
        if fits(result):
            hi = middle
            found = (result, middle)
        else:
            lo = middle + 1
    if found is None or found[1] != lo:
        found = (await attempt(kept_messages(messages, lo)), lo)
    return found
