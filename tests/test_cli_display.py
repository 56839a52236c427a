"""Pure formatting of the CLI (power.cli.display) and progress rendering (power.cli.progress)."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from power.cli import display
from power.cli.progress import Bar, Progress, ProgressTracker, Spinner

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (253_000_000, "253 MB"),
        (252_987_424, "252 MB"),
        (9_500_000, "9.5 MB"),
        (1_000_000_000, "1 GB"),
        (4_700_000_000, "4.7 GB"),
        (12_345_678_901, "12 GB"),
        (2_000_000_000_000, "2 TB"),
    ],
)
def test_human_bytes(n_bytes: int, text: str) -> None:
    assert display.human_bytes(n_bytes) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (268_098_176, "268.10M"),
        (7_000_000_000, "7B"),
        (1_500_000_000, "1.5B"),
        (33_000, "33K"),
        (12, "12"),
    ],
)
def test_human_number(count: int, text: str) -> None:
    assert display.human_number(count) == text


@pytest.mark.parametrize(
    ("seconds_ago", "text"),
    [
        (0.2, "Less than a second ago"),
        (1, "1 second ago"),
        (30, "30 seconds ago"),
        (90, "About a minute ago"),
        (150, "2 minutes ago"),
        (3600, "About an hour ago"),
        (5 * 3600, "5 hours ago"),
        (3 * 86400, "3 days ago"),
        (20 * 86400, "2 weeks ago"),
        (90 * 86400, "3 months ago"),
        (800 * 86400, "2 years ago"),
        (-245, "4 minutes from now"),
        (-3600 * 24 * 365 * 100, "Forever"),
    ],
)
def test_human_time(seconds_ago: float, text: str) -> None:
    assert display.human_time(NOW - timedelta(seconds=seconds_ago), now=NOW) == text


def test_human_time_zero_value() -> None:
    assert display.human_time(None) == "Never"
    assert display.parse_timestamp("0001-01-01T00:00:00Z") is None


def test_parse_timestamp_with_nanoseconds() -> None:
    parsed = display.parse_timestamp("2025-06-01T11:58:00.123456789Z")
    assert parsed == datetime(2025, 6, 1, 11, 58, 0, 123456, tzinfo=UTC)
    parsed = display.parse_timestamp("2025-06-01T13:58:00.5+02:00")
    assert parsed.astimezone(UTC) == datetime(2025, 6, 1, 11, 58, 0, 500000, tzinfo=UTC)
    assert display.parse_timestamp("garbage") is None


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (850, "850ns"),
        (12_000, "12µs"),
        (12_500, "12.5µs"),
        (250_500_000, "250.5ms"),
        (1_234_567_891, "1.234567891s"),
        (2_000_000_000, "2s"),
        (62_500_000_000, "1m2.5s"),
        (3_723_000_000_000, "1h2m3s"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert display.go_duration(ns) == text


def test_timing_summary_has_ollama_labels() -> None:
    text = display.timing_summary(
        {
            "total_duration": 1_500_000_000,
            "load_duration": 20_000_000,
            "prompt_eval_count": 10,
            "prompt_eval_duration": 100_000_000,
            "eval_count": 50,
            "eval_duration": 1_000_000_000,
        }
    )
    assert text == (
        "total duration:       1.5s\n"
        "load duration:        20ms\n"
        "prompt eval count:    10 token(s)\n"
        "prompt eval duration: 100ms\n"
        "prompt eval rate:     100.00 tokens/s\n"
        "eval count:           50 token(s)\n"
        "eval duration:        1s\n"
        "eval rate:            50.00 tokens/s\n"
    )
    assert display.timing_summary({}) == ""


def test_render_table_aligns_columns_without_trailing_spaces() -> None:
    text = display.render_table([["a", "bb", "c"], ["aaaa", "b", ""]], ["NAME", "ID", "X"])
    assert text == "NAME    ID    X\na       bb    c\naaaa    b\n"


def test_list_table() -> None:
    models = [
        {
            "name": "gemma:latest",
            "digest": "a1b2c3d4e5f6a7b8c9d0",
            "size": 253_000_000,
            "modified_at": (NOW - timedelta(minutes=2)).isoformat(),
        }
    ]
    lines = display.list_table(models, now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert lines[1] == "gemma:latest    a1b2c3d4e5f6    253 MB    2 minutes ago"


def test_ps_table() -> None:
    models = [
        {
            "name": "gemma:latest",
            "digest": "sha256:a1b2c3d4e5f6a7b8",
            "size": 300_000_000,
            "size_vram": 0,
            "context_length": 4096,
            "expires_at": (NOW + timedelta(minutes=4, seconds=30)).isoformat(),
        },
        {
            "name": "forever:latest",
            "digest": "b" * 64,
            "size": 100,
            "size_vram": 40,
            "context_length": 2048,
            "expires_at": "2318-01-01T00:00:00Z",
        },
        {
            "name": "old:latest",
            "digest": "c" * 64,
            "size": 1,
            "expires_at": (NOW - timedelta(seconds=1)).isoformat(),
        },
    ]
    lines = display.ps_table(models, now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    cells = [re.split(r"\s{2,}", line) for line in lines]
    assert cells[1] == [
        "gemma:latest",
        "a1b2c3d4e5f6",
        "300 MB",
        "100% CPU",
        "4096",
        "4 minutes from now",
    ]
    assert "60%/40% CPU/GPU" in lines[2] and lines[2].endswith("Forever")
    assert lines[3].endswith("Stopping...")


def test_processor_text() -> None:
    assert display.processor_text(100, 100) == "100% GPU"
    assert display.processor_text(100, 200) == "Unknown"


def test_word_wrapper_moves_a_word_that_would_cross_the_margin() -> None:
    wrapper = display.WordWrapper(width=20)
    text = wrapper.feed("hello there friend of mine")
    # 15 columns fit (width - 5): "hello there fri" is on screen when "e" would pass the margin
    visible = text.replace("\x1b[K", "")
    assert "\x1b[" in visible  # the cursor moved back over the partial word
    lines = _screen(text)
    assert lines == ["hello there", "friend of mine"]


def test_word_wrapper_streams_piece_by_piece_like_one_feed() -> None:
    text = "the quick brown fox jumps over the lazy dog again and again"
    whole = display.WordWrapper(width=24).feed(text)
    wrapper = display.WordWrapper(width=24)
    pieces = "".join(wrapper.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    assert pieces == whole
    assert all(len(line) <= 19 for line in _screen(whole))


def test_word_wrapper_disabled_passes_text_through() -> None:
    assert display.WordWrapper(width=20, enabled=False).feed("a" * 50) == "a" * 50


def _screen(output: str) -> list[str]:
    """Apply the few escape codes WordWrapper emits to get the visible lines."""
    lines = [""]
    i = 0
    while i < len(output):
        match = re.match(r"\x1b\[(\d*)([DK])", output[i:])
        if match:
            if match.group(2) == "D":
                lines[-1] = lines[-1][: -int(match.group(1))]
            i += match.end()
            continue
        if output[i] == "\n":
            lines.append("")
        else:
            lines[-1] += output[i]
        i += 1
    return [line.rstrip() for line in lines]


def test_show_summary() -> None:
    info = {
        "details": {
            "parameter_size": "268.10M",
            "quantization_level": "Q4_K_M",
            "family": "gemma3",
        },
        "model_info": {
            "general.architecture": "gemma3",
            "gemma3.context_length": 32768,
            "gemma3.embedding_length": 640,
            "tokenizer.ggml.tokens": ["a", "b", "c", "d", "e"],
        },
        "capabilities": ["completion"],
        "parameters": 'stop                           "<end>"\ntemperature                    0.7',
        "system": "line one\nline two\nline three",
        "license": "MIT",
    }
    text = display.show_summary(info)
    assert text.splitlines()[:7] == [
        "  Model",
        "    architecture        gemma3",
        "    parameters          268.10M",
        "    context length      32768",
        "    embedding length    640",
        "    quantization        Q4_K_M",
        "",
    ]
    assert "  Capabilities\n    completion\n" in text
    assert '    stop           "<end>"' in text and "    temperature    0.7" in text
    assert "  System\n    line one\n    line two\n    ...\n" in text
    assert "  License\n    MIT\n" in text
    assert "Metadata" not in text
    verbose = display.show_summary(info, verbose=True)
    assert "tokenizer.ggml.tokens" in verbose and "...+" in verbose


# ---------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bar_renders_size_rate_and_eta() -> None:
    clock = FakeClock()
    bar = Bar("pulling abc:", 100_000_000, clock=clock)
    clock.now += 2
    bar.set(20_000_000)
    clock.now += 2
    bar.set(40_000_000)
    line = bar.render(100)
    assert len(line) == 99  # one column left free so the terminal never wraps
    assert line.startswith("pulling abc:  40% ▕")
    assert line.endswith(" 40 MB/100 MB   10 MB/s      6s")
    assert line.count("█") == int(
        (100 - len("pulling abc:  40%") - len(" 40 MB/100 MB   10 MB/s      6s") - 5) * 0.4
    )


def test_bar_when_complete_shows_total_only() -> None:
    clock = FakeClock()
    bar = Bar("pulling abc:", 1000, clock=clock)
    clock.now += 1
    bar.set(5000)  # clamped to the total
    assert bar.done and bar.completed == 1000
    line = bar.render(80)
    assert line.startswith("pulling abc: 100% ▕" + "█")
    assert line.rstrip().endswith("▏   1 KB")
    assert bar.plain() == "pulling abc: 100% 1 KB"


def test_spinner_frames_and_stop() -> None:
    clock = FakeClock()
    spinner = Spinner("pulling manifest", clock=clock)
    first = spinner.render(80)
    clock.now += 0.15
    assert spinner.render(80) != first
    spinner.stop()
    assert spinner.render(80) == "pulling manifest"


def test_progress_not_a_tty_writes_plain_lines_once() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=False)
    tracker = ProgressTracker(progress, verb="pulling", skip_zero=True)
    for chunk in [
        {"status": "pulling manifest"},
        {
            "status": "pulling abcdef123456",
            "digest": "sha256:" + "ab" * 32,
            "total": 2000,
            "completed": 0,
        },
        {
            "status": "pulling abcdef123456",
            "digest": "sha256:" + "ab" * 32,
            "total": 2000,
            "completed": 1000,
        },
        {
            "status": "pulling abcdef123456",
            "digest": "sha256:" + "ab" * 32,
            "total": 2000,
            "completed": 2000,
        },
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]:
        tracker.feed(chunk)
    progress.stop()
    assert stream.getvalue() == (
        "pulling manifest\n"
        "pulling abababababab: 100% 2 KB\n"
        "verifying sha256 digest\n"
        "writing manifest\n"
        "success\n"
    )
    assert "\x1b" not in stream.getvalue()


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_tty_redraws_in_place() -> None:
    stream = TtyStream()
    progress = Progress(stream, interval=3600)  # no timed redraw: only the final one
    progress.spinner("pulling manifest")
    progress.add(Bar("pulling abc:", 10, 10))
    progress.spinner("success")
    progress.stop()
    text = stream.getvalue()
    assert text.endswith("\n")
    assert "pulling manifest\x1b[K\npulling abc: 100%" in text and "success\x1b[K" in text


def test_stop_and_clear_erases_drawn_lines() -> None:
    stream = TtyStream()
    progress = Progress(stream, interval=3600)
    progress.spinner("")
    with progress._lock:
        progress._draw_locked()
    progress.stop_and_clear()
    assert stream.getvalue().endswith("\x1b[2K\x1b[1G\x1b[?25h")
    before = stream.getvalue()
    progress.stop()  # already stopped: nothing more is written
    assert stream.getvalue() == before
