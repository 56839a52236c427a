"""Pure text formatting for the CLI: sizes, counts, relative times, durations, tables,
streamed word wrapping, the `--verbose` timing block and the `show` summary.

Nothing here writes to a terminal; every function returns text, so all of it is tested on
hand-made data. The formats follow Ollama's CLI so that scripts reading either agree.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

# ---------------------------------------------------------------- numbers


def human_bytes(n_bytes: int) -> str:
    """Decimal units as Ollama shows them: "512 B", "1.5 KB", "253 MB", "12 GB"."""
    units = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))
    unit, size = next(((u, s) for u, s in units if n_bytes >= s), ("B", 1))
    if unit == "B":
        return f"{int(n_bytes)} B"
    value = n_bytes / size
    if value >= 10 or value == math.trunc(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def human_number(count: int) -> str:
    """Parameter counts: "268.10M", "7B", "1.5B", "33K"."""
    if count >= 1_000_000_000:
        value = count / 1_000_000_000
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if count >= 1_000_000:
        value = count / 1_000_000
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if count >= 1_000:
        return f"{count / 1000:.0f}K"
    return str(count)


# ---------------------------------------------------------------- times


def human_duration(seconds: float) -> str:
    """An approximate span: "Less than a second", "2 minutes", "About an hour", "3 days"."""
    whole_seconds = int(seconds)
    if whole_seconds < 1:
        return "Less than a second"
    if whole_seconds == 1:
        return "1 second"
    if whole_seconds < 60:
        return f"{whole_seconds} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp (nanosecond fractions allowed) as an aware datetime, or None."""
    if not text:
        return None
    cleaned = _FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed.year <= 1:  # Go's zero time
        return None
    return parsed


def human_time(
    moment: datetime | None, zero_value: str = "Never", now: datetime | None = None
) -> str:
    """ "2 minutes ago", "4 minutes from now", or "Forever" for a date decades ahead."""
    if moment is None:
        return zero_value
    now = now or datetime.now(UTC)
    delta = (now - moment).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def go_duration(nanoseconds: int) -> str:
    """Go's `time.Duration.String()`: "1.234567891s", "250.5ms", "12µs", "1m2.5s", "0s"."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    ns = abs(int(nanoseconds))
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return sign + _trim_fraction(ns, 1_000) + "µs"
    if ns < 1_000_000_000:
        return sign + _trim_fraction(ns, 1_000_000) + "ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = _trim_fraction(rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim_fraction(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def eta(seconds: float) -> str:
    """A remaining time in at most two units: "5s", "3m20s", "1h5m", "99h+"."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 100 * 3600:
        return "99h+"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# ---------------------------------------------------------------- tables


def render_table(
    rows: Sequence[Sequence[str]], header: Sequence[str] | None = None, padding: int = 4
) -> str:
    """Left-aligned columns separated by `padding` spaces, no borders, no trailing spaces."""
    all_rows = [list(header)] if header else []
    all_rows += [list(row) for row in rows]
    if not all_rows:
        return ""
    n_columns = max(len(row) for row in all_rows)
    widths = [0] * n_columns
    for row in all_rows:
        for i_column, cell in enumerate(row):
            widths[i_column] = max(widths[i_column], text_width(cell))
    lines = []
    for row in all_rows:
        cells = [cell + " " * (widths[i] - text_width(cell)) for i, cell in enumerate(row)]
        lines.append((" " * padding).join(cells).rstrip())
    return "\n".join(lines) + "\n"


def char_width(char: str) -> int:
    """Terminal cells taken by one character (2 for wide East Asian characters, 0 for marks)."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(char) for char in text)


def list_table(models: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    """The `power list` table: NAME, ID, SIZE, MODIFIED."""
    rows = [
        [
            model.get("name") or model.get("model", ""),
            _short_id(model.get("digest", "")),
            human_bytes(int(model.get("size") or 0)),
            human_time(parse_timestamp(model.get("modified_at")), "Never", now),
        ]
        for model in models
    ]
    return render_table(rows, ["NAME", "ID", "SIZE", "MODIFIED"])


def processor_text(size: int, size_vram: int) -> str:
    """Where a loaded model lives: "100% CPU", "100% GPU", "48%/52% CPU/GPU"."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu_percent = round((size - size_vram) / size * 100)
    return f"{cpu_percent}%/{100 - cpu_percent}% CPU/GPU"


def ps_table(models: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    """The `power ps` table: NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL."""
    now = now or datetime.now(UTC)
    rows = []
    for model in models:
        size = int(model.get("size") or 0)
        expires = parse_timestamp(model.get("expires_at"))
        if expires is not None and expires < now:
            until = "Stopping..."
        else:
            until = human_time(expires, "Never", now)
        rows.append(
            [
                model.get("name") or model.get("model", ""),
                _short_id(model.get("digest", "")),
                human_bytes(size),
                processor_text(size, int(model.get("size_vram") or 0)),
                str(model.get("context_length") or ""),
                until,
            ]
        )
    return render_table(rows, ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"])


def _short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


# ---------------------------------------------------------------- generation output


def timing_summary(metrics: Mapping[str, Any]) -> str:
    """The `--verbose` block printed after an answer, Ollama's labels and formats."""
    lines = []
    total = int(metrics.get("total_duration") or 0)
    load = int(metrics.get("load_duration") or 0)
    prompt_count = int(metrics.get("prompt_eval_count") or 0)
    prompt_duration = int(metrics.get("prompt_eval_duration") or 0)
    eval_count = int(metrics.get("eval_count") or 0)
    eval_duration = int(metrics.get("eval_duration") or 0)
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if prompt_count > 0:
        lines.append(f"prompt eval count:    {prompt_count} token(s)")
    if prompt_duration > 0:
        lines.append(f"prompt eval duration: {go_duration(prompt_duration)}")
        lines.append(f"prompt eval rate:     {prompt_count / (prompt_duration / 1e9):.2f} tokens/s")
    if eval_count > 0:
        lines.append(f"eval count:           {eval_count} token(s)")
    if eval_duration > 0:
        lines.append(f"eval duration:        {go_duration(eval_duration)}")
        lines.append(f"eval rate:            {eval_count / (eval_duration / 1e9):.2f} tokens/s")
    return "".join(line + "\n" for line in lines)


@attrs.define
class WordWrapper:
    """Wraps streamed text at word boundaries, one piece at a time.

    `feed(text)` returns what to write to the terminal now. When a word would cross the right
    margin (width - 5), the part of it already on screen is erased with a cursor move and the
    word continues on the next line; a word longer than the line is broken instead. With
    `enabled` False (or a width under 10) text passes through untouched.
    """

    width: int = 80
    enabled: bool = True
    line_length: int = 0
    word: str = ""

    def feed(self, text: str) -> str:
        if not self.enabled or self.width < 10:
            return text
        out: list[str] = []
        for char in text:
            if self.line_length + 1 > self.width - 5:
                word_width = text_width(self.word)
                if word_width > self.width - 10:
                    out.append(char)
                    self.word = ""
                    self.line_length = 0
                    continue
                if word_width:
                    out.append(f"\x1b[{word_width}D")
                out.append("\x1b[K\n")
                out.append(self.word + char)
                self.line_length = word_width + char_width(char)
                if char in " \t":
                    self.word = ""
                elif char in "\r\n":
                    self.word = ""
                    self.line_length = 0
                else:
                    self.word += char
                continue
            out.append(char)
            width = char_width(char)
            self.line_length += width
            if width >= 2 or char in " \t":
                self.word = ""
            elif char in "\r\n":
                self.line_length = 0
                self.word = ""
            else:
                self.word += char
        return "".join(out)


# ---------------------------------------------------------------- show


def _head(text: str, n_lines: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [["", line] for line in lines[:n_lines]]
    if len(lines) > n_lines:
        rows.append(["", "..."])
    return rows


def _section(title: str, rows: list[list[str]]) -> str:
    table = render_table(rows, padding=4)
    return f"  {title}\n" + table + "\n"


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _metadata_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        shown: list[str] = []
        width = 1
        for i, item in enumerate(value):
            item_width = len(str(item)) + (2 if i else 0)
            if width + item_width > 10 and i > 0:
                break
            width += item_width
            shown.append(str(item))
        if len(shown) < len(value):
            return "[" + " ".join(shown) + f" ...+{len(value) - len(shown)} more]"
        return "[" + " ".join(shown) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return _number_text(value)


def show_summary(info: Mapping[str, Any], verbose: bool = False) -> str:
    """`power show MODEL`: Model, Capabilities, Parameters, (Metadata), System, License."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    rows: list[list[str]] = []
    if model_info:
        arch = str(model_info.get("general.architecture") or "")
        if arch:
            rows.append(["", "architecture", arch])
        parameters = details.get("parameter_size") or ""
        if not parameters and isinstance(model_info.get("general.parameter_count"), int | float):
            parameters = human_number(int(model_info["general.parameter_count"]))
        if parameters:
            rows.append(["", "parameters", str(parameters)])
        for key, label in (
            ("context_length", "context length"),
            ("embedding_length", "embedding length"),
        ):
            value = model_info.get(f"{arch}.{key}")
            if isinstance(value, int | float):
                rows.append(["", label, _number_text(value)])
    else:
        rows.append(["", "architecture", str(details.get("family") or "")])
        rows.append(["", "parameters", str(details.get("parameter_size") or "")])
    rows.append(["", "quantization", str(details.get("quantization_level") or "")])
    if info.get("requires"):
        rows.append(["", "requires", str(info["requires"])])
    out = [_section("Model", rows)]

    capabilities = info.get("capabilities") or []
    if capabilities:
        out.append(_section("Capabilities", [["", str(cap)] for cap in capabilities]))

    parameters_text = info.get("parameters") or ""
    if parameters_text:
        parameter_rows = [
            ["", *line.split()] for line in parameters_text.splitlines() if line.strip()
        ]
        out.append(_section("Parameters", parameter_rows))

    if model_info and verbose:
        metadata_rows = [["", key, _metadata_value(model_info[key])] for key in sorted(model_info)]
        out.append(_section("Metadata", metadata_rows))

    if info.get("system"):
        out.append(_section("System", _head(info["system"], 2)))
    if info.get("license"):
        license_text = info["license"]
        if isinstance(license_text, list):
            license_text = "\n".join(license_text)
        out.append(_section("License", _head(license_text, 2)))
    return "".join(out)
