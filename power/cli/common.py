"""What every CLI command shares: its output, its error type, a pull with progress bars.

May import: `power.client` and the CLI's own leaf modules (`display`, `progress`); every other
module of `power.cli` may import this one.
"""

from __future__ import annotations

import sys

from power.cli.progress import Progress, ProgressTracker
from power.client import Client


class CommandError(Exception):
    """A failure to report as one `Error: ...` line (exit status 1)."""


def out(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def pull_with_progress(client: Client, name: str, insecure: bool = False) -> None:
    """Pull `name`, drawing per-layer bars and status lines on stderr."""
    progress = Progress()
    tracker = ProgressTracker(progress, verb="pulling", skip_zero=True)
    try:
        for chunk in client.pull(name, insecure=insecure, stream=True):
            tracker.feed(chunk)
    finally:
        progress.stop()
