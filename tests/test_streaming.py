"""Wire framing (NDJSON, SSE), timestamps and the merger for slow readers."""

from __future__ import annotations

import json
import re
from datetime import datetime

from power.http.streaming import (
    SSE_DONE,
    ChunkMerger,
    merge_native_chunks,
    ndjson_line,
    rfc3339,
    rfc3339_now,
    sse_event,
)


def test_ndjson_line():
    line = ndjson_line({"model": "m", "response": "é\n", "done": False})
    assert line == '{"model":"m","response":"é\\n","done":false}\n'.encode()
    assert line.count(b"\n") == 1
    assert json.loads(line) == {"model": "m", "response": "é\n", "done": False}


def test_sse_event_and_done():
    assert sse_event({"a": [1, 2]}) == b'data: {"a":[1,2]}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_rfc3339():
    assert rfc3339(1_691_174_565_499_127_455) == "2023-08-04T18:42:45.499127455Z"
    assert rfc3339(1_691_174_565_500_000_000) == "2023-08-04T18:42:45.5Z"
    assert rfc3339(1_691_174_565_000_000_000) == "2023-08-04T18:42:45.0Z"
    now = rfc3339_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}Z", now)
    assert datetime.fromisoformat(now).tzinfo is not None


def chunk(text, **extra):
    return {
        "model": "m",
        "created_at": "t",
        "message": {"role": "assistant", "content": text},
        "done": False,
        **extra,
    }


def test_merge_native_chunks():
    first = chunk("Hel", logprobs=[{"token": "Hel"}])
    first["message"]["thinking"] = "a"
    second = chunk("lo", logprobs=[{"token": "lo"}], created_at="t2")
    second["message"]["tool_calls"] = [{"function": {"name": "f"}}]
    merged = merge_native_chunks(first, second)
    assert merged["message"] == {
        "role": "assistant",
        "content": "Hello",
        "thinking": "a",
        "tool_calls": [{"function": {"name": "f"}}],
    }
    assert merged["logprobs"] == [{"token": "Hel"}, {"token": "lo"}]
    assert merged["created_at"] == "t2"
    assert first["message"]["content"] == "Hel"  # inputs untouched
    generate = merge_native_chunks(
        {"response": "a", "done": False}, {"response": "b", "done": False}
    )
    assert generate == {"response": "ab", "done": False}


def test_chunk_merger_keeps_final_and_error_chunks_apart():
    merger = ChunkMerger()
    assert merger.pop() is None
    merger.push(chunk("a"))
    merger.push(chunk("b"))
    merger.push(chunk("c"))
    assert len(merger) == 1
    assert merger.pop()["message"]["content"] == "abc"
    merger.push(chunk("d"))
    final = {**chunk(""), "done": True, "done_reason": "stop"}
    merger.push(final)
    merger.push({"error": "late"})
    assert len(merger) == 3
    assert merger.pop()["message"]["content"] == "d"
    assert merger.pop() is final
    assert merger.pop() == {"error": "late"}
    assert merger.pop() is None
