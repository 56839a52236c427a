"""The request log: one line per request (status, duration, client, method, path, model and
token counts), written after a stream's last byte, off by `POWER_REQUEST_LOG=0`.

Lines go through a queue to a writer thread; stopping the server flushes it, so each test reads
the log after its server has exited (no waiting on the writer)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import httpx
import ollama
import pytest

from conftest import GEMMA, run_power_server
from power.http.request_log import RequestRecord, format_line

LINE = re.compile(
    r"^\[power\] \d{4}/\d\d/\d\d - \d\d:\d\d:\d\d \| (?P<status>\d{3}) \| +(?P<duration>\S+) \| "
    r'(?P<client>\S+) \| (?P<method>[A-Z]+) "(?P<path>[^"]*)"(?: \| (?P<details>.*))?$'
)


def test_format_line() -> None:
    record = RequestRecord(model="gemma3:270m", prompt_tokens=5, eval_tokens=7)
    line = format_line(
        status=200,
        seconds=1.5,
        client="127.0.0.1",
        method="POST",
        path="/api/generate",
        record=record,
        now=datetime(2026, 12, 2, 11, 4, 5),
    )
    assert line == (
        '[power] 2026/12/02 - 11:04:05 | 200 |     1.500000s | 127.0.0.1 | POST "/api/generate"'
        " | model=gemma3:270m prompt_tokens=5 eval_tokens=7"
    )
    short = format_line(
        status=404, seconds=0.0123, client="::1", method="GET", path='/x"y', record=RequestRecord()
    )
    assert short.endswith(' | 404 |   12.300000ms | ::1 | GET "/x%22y"')


def _lines(log_path: Path) -> list[re.Match]:
    matches = [LINE.match(line) for line in log_path.read_text(errors="replace").splitlines()]
    return [m for m in matches if m]


def _seconds(duration: str) -> float:
    for unit, scale in (("ms", 1e-3), ("µs", 1e-6), ("s", 1.0)):
        if duration.endswith(unit):
            return float(duration.removesuffix(unit)) * scale
    raise AssertionError(duration)


@pytest.mark.slow
def test_every_request_is_one_line(model_store: Path) -> None:
    with run_power_server(model_store) as url:
        log_path = model_store.parent / f"server-{url.rsplit(':', 1)[1]}.log"
        client = ollama.Client(host=url)
        assert httpx.get(url + "/api/version").status_code == 200
        final = None
        for chunk in client.generate(
            GEMMA, "1, 2, 3,", raw=True, stream=True, options={"num_predict": 5, "temperature": 0}
        ):
            final = chunk
        assert final is not None and final.done
        with pytest.raises(ollama.ResponseError):
            client.generate("no-such-model", "hi")
        with httpx.stream(
            "POST",
            url + "/api/generate",
            json={"model": GEMMA, "prompt": "Once upon a time", "options": {"num_predict": 500}},
            timeout=120,
        ) as stream:
            first = next(stream.iter_lines())
            assert json.loads(first)["done"] is False
        # leaving the block closes the connection mid-stream
    lines = _lines(log_path)
    by_path: dict[tuple[str, str], list[re.Match]] = {}
    for match in lines:
        by_path.setdefault((match["method"], match["path"]), []).append(match)

    (version,) = by_path[("GET", "/api/version")]
    assert version["status"] == "200" and version["client"] == "127.0.0.1"
    assert version["details"] is None

    generates = by_path[("POST", "/api/generate")]
    assert len(generates) == 3
    (generated,) = [m for m in generates if "eval_tokens" in (m["details"] or "")]
    (missing,) = [m for m in generates if m["status"] == "404"]
    (gone,) = [m for m in generates if "(client gone)" in (m["details"] or "")]
    assert generated["status"] == "200"
    assert generated["details"] == (
        f"model={GEMMA} prompt_tokens={final.prompt_eval_count} eval_tokens=5"
    )
    # the line is written after the stream's last byte: it covers the whole generation
    assert _seconds(generated["duration"]) >= final.total_duration / 1e9
    assert missing["status"] == "404" and missing["details"] == "model=no-such-model:latest"
    assert gone["status"] == "200" and gone["details"] == f"model={GEMMA} (client gone)"
    # the start-up lines and the rest of the log are untouched by the request log
    assert "power listening on" in log_path.read_text()


@pytest.mark.slow
def test_the_request_log_can_be_turned_off(tmp_path: Path) -> None:
    store = tmp_path / "models"
    store.mkdir()
    with run_power_server(store, {"POWER_REQUEST_LOG": "0"}) as url:
        log_path = store.parent / f"server-{url.rsplit(':', 1)[1]}.log"
        assert httpx.get(url + "/api/tags").status_code == 200
    assert _lines(log_path) == []
    assert "power listening on" in log_path.read_text()
