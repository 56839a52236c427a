"""Progress display on stderr: per-layer bars (size, speed, ETA) and status spinners.

`Bar` and `Spinner` are states that render themselves to one line of text given a width and
a clock reading, so they are pure and tested without a terminal. `Progress` owns a list of
states and a stream:

- on a terminal it redraws all its lines in place (cursor up, clear line) every 100 ms from a
  daemon thread, and once more when stopped;
- otherwise it writes plain lines, each once and in order, when its text is final: a spinner's
  message when it stops (a newer status replaced it, or the display stopped), a bar's line when
  it completes; never escape codes.

`feed_progress(progress, chunk)` turns the `{"status","digest","total","completed"}` dicts
streamed by /api/pull, /api/push and /api/create into bars and spinners, as Ollama's CLI does.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import attrs

from power.cli.display import eta, human_bytes

SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
RATE_WINDOW = 10
DEFAULT_WIDTH = 80


def _pad_left(text: str, width: int) -> str:
    return " " * (width - len(text)) + text


@attrs.define
class Bar:
    """One layer's transfer: `message  42% ▕███   ▏ 106 MB/253 MB  12 MB/s  12s`.

    `clock` gives seconds (monotonic); the rate is measured over the last few updates taken
    at least a second apart, and over the whole transfer once it is complete.
    """

    message: str
    total: int
    completed: int = 0
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(default=None)
    stopped: float | None = None
    initial: int = attrs.field(default=None)
    samples: list[tuple[float, int]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()
        if self.initial is None:
            self.initial = self.completed
        if self.total and self.completed >= self.total:
            self.stopped = self.started

    @property
    def done(self) -> bool:
        return self.stopped is not None

    def set(self, completed: int) -> None:
        now = self.clock()
        completed = min(completed, self.total) if self.total else completed
        self.completed = completed
        if self.total and completed >= self.total and self.stopped is None:
            self.stopped = now
        if not self.samples or now - self.samples[-1][0] >= 1.0:
            self.samples.append((now, completed))
            del self.samples[:-RATE_WINDOW]

    def percent(self) -> float:
        return self.completed / self.total * 100 if self.total > 0 else 0.0

    def rate(self) -> float:
        """Bytes per second (0 when not yet measurable)."""
        if self.stopped is not None:
            amount, seconds = self.completed - self.initial, self.stopped - self.started
        elif len(self.samples) == 1:
            amount = self.samples[0][1] - self.initial
            seconds = self.samples[0][0] - self.started
        elif len(self.samples) > 1:
            (t_first, first), (t_last, last) = self.samples[0], self.samples[-1]
            amount, seconds = last - first, t_last - t_first
        else:
            return 0.0
        seconds = round(seconds)
        return amount / seconds if seconds > 0 else 0.0

    def render(self, width: int) -> str:
        prefix = (
            self.message.strip() + " " if self.message.strip() else ""
        ) + f"{self.percent():3.0f}%"
        rate = self.rate()
        if self.stopped is None:
            suffix = (
                _pad_left(human_bytes(self.completed), 6)
                + "/"
                + _pad_left(human_bytes(self.total), 6)
            )
        else:
            suffix = _pad_left(human_bytes(self.total), 6) + " " * 7
        if self.stopped is None and rate > 0:
            suffix += "  " + _pad_left(human_bytes(int(rate)), 6) + "/s"
            suffix += "  " + _pad_left(eta((self.total - self.completed) / rate), 6)
        else:
            suffix += " " * 18
        room = width - len(prefix) - len(suffix) - 5
        filled = max(0, int(room * self.percent() / 100))
        middle = " ▕" + "█" * filled + " " * max(0, room - filled) + "▏ "
        return prefix + middle + suffix

    def plain(self) -> str:
        """The line written once when the output is not a terminal."""
        return f"{self.message.strip()} {self.percent():3.0f}% {human_bytes(self.total)}".strip()


@attrs.define
class Spinner:
    """A status line with a turning wheel while it is active; just the message once stopped."""

    message: str
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(default=None)
    stopped: bool = False

    def __attrs_post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def stop(self) -> None:
        self.stopped = True

    def render(self, width: int) -> str:
        text = self.message.strip()
        if self.stopped:
            return text
        frame = SPINNER_FRAMES[int((self.clock() - self.started) * 10) % len(SPINNER_FRAMES)]
        return (text + " " if text else "") + frame + " "

    def plain(self) -> str:
        return self.message.strip()


State = Bar | Spinner


class Progress:
    """A set of progress lines on `stream` (stderr by default); see the module docstring.

    Thread-safe: `add`, `stop` and the redraw thread share one lock. `stop()` leaves the last
    frame on screen; `stop_and_clear()` erases it (used for the spinner before an answer).
    """

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, interval: float = 0.1
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.states: list[State] = []
        self._n_drawn_lines = 0
        self._plain_written: set[int] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._interval = interval

    # -- building

    def add(self, state: State) -> State:
        with self._lock:
            if not self.tty:
                self._flush_plain_locked()
            self.states.append(state)
            if self.tty and not self._stopped.is_set():
                self._draw_locked()  # the first frame at once, then every `interval`
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
                    self._thread.start()
        return state

    def spinner(self, message: str = "") -> Spinner:
        """Stop the current spinners and add a new one."""
        for state in self.states:
            if isinstance(state, Spinner):
                state.stop()
        return self.add(Spinner(message))

    def bar_updated(self, bar: Bar) -> None:
        """Tell a non-terminal display that `bar` moved (it writes finished lines once)."""
        if not self.tty and bar.done:
            with self._lock:
                self._flush_plain_locked()

    # -- ending

    def stop(self) -> None:
        """Stop the redraw, stop the spinners and leave the final frame (plus a newline)."""
        if not self._finish():
            return
        with self._lock:
            if self.tty:
                self._draw_locked()
                if self._n_drawn_lines:
                    self.stream.write("\n")
            else:
                self._flush_plain_locked(everything=True)
            self.stream.flush()

    def stop_and_clear(self) -> None:
        """Stop and erase every line drawn (nothing is left on the screen)."""
        if not self._finish():
            return
        with self._lock:
            if self.tty and self._n_drawn_lines:
                parts = ["\x1b[?25l"]
                for i in range(self._n_drawn_lines):
                    if i:
                        parts.append("\x1b[A")
                    parts.append("\x1b[2K\x1b[1G")
                parts.append("\x1b[?25h")
                self.stream.write("".join(parts))
                self.stream.flush()
            self._n_drawn_lines = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals

    def _finish(self) -> bool:
        if self._stopped.is_set():
            return False
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for state in self.states:
            if isinstance(state, Spinner):
                state.stop()
        return True

    def _flush_plain_locked(self, everything: bool = False) -> None:
        """Write, in order, each line whose text is final (a stopped spinner, a complete bar)
        and that was not written yet; `everything` writes unfinished bars too."""
        for state in self.states:
            finished = state.stopped if isinstance(state, Spinner) else state.done
            if id(state) in self._plain_written or not (finished or everything):
                continue
            self._plain_written.add(id(state))
            line = state.plain()
            if line:
                self.stream.write(line + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            with self._lock:
                if not self._stopped.is_set():
                    self._draw_locked()

    def _draw_locked(self) -> None:
        size = shutil.get_terminal_size((DEFAULT_WIDTH, 24))
        width, height = size.columns, size.lines
        visible = self.states[-height:] if height > 0 else self.states
        parts = ["\x1b[?25l"]
        if self._n_drawn_lines > 1:
            parts.append(f"\x1b[{self._n_drawn_lines - 1}A")
        parts.append("\x1b[1G")
        for i, state in enumerate(visible):
            parts.append(state.render(width)[: max(width - 1, 1)] + "\x1b[K")  # never wrap
            if i < len(visible) - 1:
                parts.append("\n")
        parts.append("\x1b[?25h")
        self._n_drawn_lines = len(visible)
        self.stream.write("".join(parts))
        self.stream.flush()


@attrs.define
class ProgressTracker:
    """Turns streamed progress dicts into bars (one per digest) and spinners (one per status).

    `verb` names bars of layers whose status is empty ("pulling 1a2b3c4d5e6f").
    Zero-byte first reports of a pull are skipped, as Ollama does, to avoid a row of 0% bars.
    """

    progress: Progress
    verb: str = "pulling"
    skip_zero: bool = False
    bars: dict[str, Bar] = attrs.field(factory=dict)
    status: str = ""

    def feed(self, chunk: Mapping[str, Any]) -> None:
        digest = chunk.get("digest") or ""
        status = chunk.get("status") or ""
        if digest and chunk.get("total"):
            completed = int(chunk.get("completed") or 0)
            bar = self.bars.get(digest)
            if bar is None:
                if self.skip_zero and completed == 0:
                    return
                for state in self.progress.states:
                    if isinstance(state, Spinner):
                        state.stop()
                short = digest.removeprefix("sha256:")[:12]
                if self.verb == "pulling":
                    message = f"pulling {short}:"
                else:
                    message = status or f"{self.verb} {short}"
                bar = Bar(message, int(chunk["total"]), completed)
                self.bars[digest] = bar
                self.progress.add(bar)
            bar.set(completed)
            self.progress.bar_updated(bar)
        elif status and status != self.status:
            self.status = status
            self.progress.spinner(status)
