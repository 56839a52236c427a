"""The one rule for a create whose `from` names a file or folder of the server's machine.

power's extension to /api/create lets `from` name a GGUF file (copied in) or a safetensors folder
(converted). The CLI sends such paths only when the server runs on the same machine, and always
absolute. The rule, applied by the HTTP route (before anything runs) and by `create` (to decide
what `from` names) through this module alone, so that the two can never disagree:

- `from` is a path when it starts with `/`, `~`, `.` or `\\` (or a Windows drive, `C:\\`);
  anything else is a model name (`gemma3`, `library/gemma3:270m`, `host:5000/ns/model`);
- a path must be absolute once `~` is expanded: `.`, `..`, `./folder` or `~nobody/x` are refused
  (a relative path would be resolved against the server's working folder, which no client knows);
- only a client on this machine's loopback may name one (IPv4-mapped loopback addresses
  included); in-process callers (`client=None`) may.

Refusals are `LocalPathError` with the HTTP status to answer: 400 (not absolute), 403 (a remote
client).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from power.config import is_loopback_address

_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


class LocalPathError(ValueError):
    """A `from` path that may not be used; `status` is the HTTP answer (400 or 403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def names_a_path(source: str) -> bool:
    """Whether `from` names a path of the server (as opposed to a model name)."""
    return source.startswith(("/", "~", ".", "\\")) or bool(_WINDOWS_DRIVE.match(source))


def local_source_path(source: str, *, client: str | None = None) -> Path | None:
    """The absolute path that `from` names, or None when it names a model.

    `client` is the requesting client's address (None for an in-process caller). Raises
    LocalPathError: 400 for a path that is not absolute after `~` expansion, 403 for a client
    that is not on loopback. Nothing is read from the disk here."""
    if not names_a_path(source):
        return None
    if client is not None and not is_loopback_address(client):
        raise LocalPathError("creating from a local path is only allowed from this machine", 403)
    expanded = os.path.expanduser(source)
    if not os.path.isabs(expanded):
        raise LocalPathError(
            f"'from' must be a model name or an absolute path of the server's machine, "
            f"got {source!r}",
            400,
        )
    return Path(expanded)
