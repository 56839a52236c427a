"""Wire framing for streamed answers: NDJSON lines (native routes), SSE events (OpenAI routes).

Also the timestamp format of `created_at` and a merger that coalesces queued native chunks for
a reader that falls behind, so the engine never waits on a slow client (STYLE rule 2).
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

NDJSON_CONTENT_TYPE = "application/x-ndjson"
SSE_CONTENT_TYPE = "text/event-stream"

#: The terminator of an OpenAI-style stream.
SSE_DONE = b"data: [DONE]\n\n"


#: One encoder for every chunk: `json.dumps` with options builds a new encoder at each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON as Go's encoder writes it: no spaces, non-ASCII kept as UTF-8."""
    return _ENCODER.encode(obj)


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON record: the object's JSON and a newline."""
    return (dumps(obj) + "\n").encode("utf-8")


def sse_event(obj: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying the object's JSON: `data: {...}\\n\\n`, preceded by
    `event: NAME\\n` when `event` is given (the Anthropic and Responses streams name theirs)."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(obj).encode("utf-8") + b"\n\n"


def rfc3339(ns_since_epoch: int) -> str:
    """RFC 3339 UTC with nanosecond digits, trailing zeros trimmed (Go's RFC3339Nano), `Z`.

    At least one sub-second digit is always written, so clients always see sub-second digits.
    """
    global _last_stamp
    seconds, ns = divmod(ns_since_epoch, 1_000_000_000)
    last = _last_stamp  # (seconds, their text): one strftime per second, not one per chunk
    if last[0] != seconds:
        last = _last_stamp = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    digits = f"{ns:09d}".rstrip("0") or "0"
    return f"{last[1]}.{digits}Z"


_last_stamp: tuple[int, str] = (-1, "")


def rfc3339_now() -> str:
    """The current time for `created_at` fields."""
    return rfc3339(time.time_ns())


# ----------------------------------------------------------------- merging for slow readers

_TEXT_KEYS = ("response", "thinking")
_MESSAGE_TEXT_KEYS = ("content", "thinking")


def merge_native_chunks(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One native chunk equal to `first` followed by `second` (neither is modified).

    Text (`response`, `thinking`, `message.content`, `message.thinking`) is concatenated;
    `message.tool_calls` and `logprobs` are appended; every other key takes `second`'s value
    (so the merged chunk carries the later `created_at`, and `done`/metrics if `second` has them).
    """
    merged = dict(first)
    for key, value in second.items():
        if key in _TEXT_KEYS and isinstance(value, str):
            merged[key] = merged.get(key, "") + value
        elif key == "logprobs" and isinstance(value, list):
            merged[key] = list(merged.get(key) or []) + value
        elif key == "message" and isinstance(value, dict):
            merged[key] = _merge_messages(merged.get("message") or {}, value)
        else:
            merged[key] = value
    return merged


def _merge_messages(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    merged = dict(first)
    for key, value in second.items():
        if key in _MESSAGE_TEXT_KEYS and isinstance(value, str):
            merged[key] = merged.get(key, "") + value
        elif key == "tool_calls" and isinstance(value, list):
            merged[key] = list(merged.get(key) or []) + value
        else:
            merged[key] = value
    return merged


class ChunkMerger:
    """A queue of native chunks that merges what the reader has not taken yet.

    The producer calls `push(chunk)` and never blocks; the reader calls `pop()` and gets every
    chunk pushed since its last `pop()` merged into one (None when nothing is pending). A chunk
    with `"done": true` or an `"error"` key is never merged into a later one, and later chunks
    are not merged into it, so the final chunk and errors keep their own line.
    """

    def __init__(self) -> None:
        self._pending: deque[dict[str, Any]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, chunk: dict[str, Any]) -> None:
        if self._pending and _mergeable(self._pending[-1]) and _mergeable(chunk):
            self._pending[-1] = merge_native_chunks(self._pending[-1], chunk)
        else:
            self._pending.append(chunk)

    def pop(self) -> dict[str, Any] | None:
        return self._pending.popleft() if self._pending else None


def _mergeable(chunk: dict[str, Any]) -> bool:
    return not chunk.get("done") and "error" not in chunk
