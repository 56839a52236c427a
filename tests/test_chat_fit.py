"""Which messages a too-long chat keeps (`power.http.chat_fit`), as Ollama's chatPrompt keeps
them: the last message always, the system messages of the dropped part, the longest suffix
that fits."""

from __future__ import annotations

import trio

from power.http.chat_fit import drop_old_messages, kept_messages
from power.messages import Message


def _conversation(*specs: tuple[str, int]) -> list[Message]:
    return [Message(role=role, content="x" * size) for role, size in specs]


def _fit(messages: list[Message], limit: int) -> tuple[list[Message], int, int]:
    """(kept messages, start, number of attempts) with `limit` characters of context."""
    attempts = []

    async def attempt(kept: list[Message]) -> list[Message]:
        attempts.append(kept)
        return kept

    def fits(kept: list[Message]) -> bool:
        return sum(len(m.content) for m in kept) <= limit

    kept, start = trio.run(drop_old_messages, messages, attempt, fits)
    return kept, start, len(attempts)


def test_kept_messages_keep_the_system_messages_before_the_cut() -> None:
    messages = _conversation(("system", 1), ("user", 2), ("system", 3), ("assistant", 4))
    assert kept_messages(messages, 3) == [messages[0], messages[2], messages[3]]
    assert kept_messages(messages, 0) == messages


def test_the_longest_suffix_that_fits_is_kept() -> None:
    messages = _conversation(
        ("system", 10),
        ("user", 100),
        ("assistant", 100),
        ("user", 30),
        ("assistant", 20),
        ("user", 5),
    )
    kept, start, _ = _fit(messages, 70)
    assert start == 3 and kept == [messages[0], *messages[3:]]
    kept, start, _ = _fit(messages, 40)
    assert start == 4 and kept == [messages[0], *messages[4:]]


def test_the_last_message_stays_even_when_nothing_fits() -> None:
    messages = _conversation(("system", 10), ("user", 100), ("user", 500))
    kept, start, _ = _fit(messages, 50)
    assert start == 2 and kept == [messages[0], messages[2]]


def test_a_long_conversation_costs_few_renders() -> None:
    messages = _conversation(("system", 1), *[("user", 10)] * 1000)
    kept, start, n_attempts = _fit(messages, 105)
    assert len(kept) == 11 and start == 991
    assert n_attempts <= 12  # bisection, not one render per message
