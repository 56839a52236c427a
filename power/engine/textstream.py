"""Incremental detokenisation and stop strings, for one generating sequence.

Token pieces are bytes, and a UTF-8 character may be split across tokens (byte-fallback tokens
of emoji or CJK characters). `Utf8Accumulator` turns pieces into text and holds back an
incomplete trailing character until its last byte arrives. `StopMatcher` then withholds any
text that could still be the start of a stop string, so a client never sees a stop string or a
piece of one, even when the stop spans several tokens.

The engine feeds each token's piece through both, in order:

    text = utf8.feed(piece)
    emit, stopped = stops.feed(text)      # send `emit`; finish the sequence when `stopped`

and at the end (end-of-generation token, length limit) sends `stops.feed(utf8.flush())`'s text
followed by `stops.flush()`.
"""

from __future__ import annotations

import codecs


class Utf8Accumulator:
    """Bytes in, complete UTF-8 text out.

    `feed` returns the text of every character completed so far; an incomplete sequence at
    the end is kept for the next call. Bytes that can never form a character (an invalid start
    byte, a broken sequence) become U+FFFD as soon as that is known; `flush` turns a dangling
    incomplete sequence into U+FFFD too and resets the accumulator.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

    @property
    def pending(self) -> bytes:
        """The bytes held back (an incomplete character)."""
        return self._decoder.getstate()[0]


class StopMatcher:
    """Cut generated text at the first stop string, across any number of `feed` calls.

    `feed(text)` returns `(emit, stopped)`: `emit` is the text that is now certain to come
    before any stop string; text that could be the beginning of a stop is held back until later
    text confirms or refutes it. When a stop string completes, `emit` is the text before it and
    `stopped` is True; the stop string and anything after it are dropped, and later calls return
    `("", True)`. The stop that completes first wins (then the longer one), as if text came
    one character at a time, so the result does not depend on how text is split into calls.
    Empty stop strings are ignored. `flush()` returns the held-back text once no more text will come.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text
        self._held = ""

    @property
    def held(self) -> str:
        return self._held

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buffer = self._held + text
        first, first_end = -1, -1
        for stop in self.stops:
            at = buffer.find(stop)
            end = at + len(stop)
            if at >= 0 and (first < 0 or (end, at) < (first_end, first)):
                first, first_end, self.matched = at, end, stop
        if first >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:first], True
        n_hold = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - n_hold :] if n_hold else ""
        return buffer[: len(buffer) - n_hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buffer: str) -> int:
        """The length of the longest end of `buffer` that is a proper prefix of a stop."""
        best = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best
