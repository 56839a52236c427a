"""What an error tells a client: the status and a message, never a server path or a traceback.

- `public_message(text)`: `text` with every absolute path of the server cut to its last part
  (`llama.cpp could not load model /srv/models/blobs/sha256-ab…` → `… model …/sha256-ab…`);
  every error body power writes goes through it (`state.error_response`, the NDJSON and SSE
  error lines, the OpenAI error bodies).
- `internal_error(exc)`: logs the exception and its traceback under a short id, and returns the
  message a client gets instead: `internal error (id 5f2c9a1e)`. The id ties a user's report to
  the server's log.
- `describe(exc)`: the (status, message) of an exception that ends a job or a stream: known
  errors keep their own status and message; an OSError or anything unexpected is an
  `internal_error` (500; a full disk is a 507).
"""

from __future__ import annotations

import errno
import logging
import re
import secrets

from power.engine.types import EngineError
from power.http.schemas import RequestError
from power.options import OptionError
from power.registry.local_paths import LocalPathError
from power.registry.names import InvalidNameError
from power.registry.oci import RegistryError
from power.registry.store import InvalidDigestError, ModelNotFoundError, StoreError

log = logging.getLogger("power.errors")

#: An absolute path: a `/` at the start or after a space, quote, bracket, `=` or `,`, with at
#: least one more character; `http://host/x` is not one (the `/` follows `:`).
_ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s'"(\[=,]))/[^\s'"()\[\],]+""")


def _last_part(match: re.Match[str]) -> str:
    path = match.group(0).rstrip("/")
    tail = path.rsplit("/", 1)[-1]
    return f"…/{tail}" if tail else "…"


def public_message(text: str) -> str:
    """`text` with the server's absolute paths cut to their last part."""
    return _ABSOLUTE_PATH.sub(_last_part, text)


def internal_error(exc: BaseException, context: str = "") -> str:
    """Log `exc` (with its traceback) under a new id; the message for the client."""
    error_id = secrets.token_hex(4)
    log.error(
        "internal error %s%s: %s", error_id, f" ({context})" if context else "", exc, exc_info=exc
    )
    return f"internal error (id {error_id})"


def describe(exc: BaseException, context: str = "") -> tuple[int, str]:
    """The HTTP status and the client's message for an exception that ends a request."""
    if isinstance(exc, RequestError):
        return exc.status, public_message(exc.message)
    if isinstance(exc, LocalPathError):
        return exc.status, str(exc)
    if isinstance(exc, ModelNotFoundError):
        return 404, public_message(str(exc))
    if isinstance(exc, EngineError | RegistryError):
        status = getattr(exc, "status", None)
        status = status if isinstance(status, int) and 400 <= status < 600 else 500
        return status, public_message(str(exc))
    if isinstance(exc, OptionError | InvalidNameError | InvalidDigestError):
        return 400, public_message(str(exc))
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("out of disk space (%s): %s", context, exc)
            return 507, "not enough disk space on the server"
        return 500, internal_error(exc, context)
    if isinstance(exc, StoreError):
        return 500, public_message(str(exc))
    if isinstance(exc, ValueError) and type(exc).__module__.startswith("power."):
        # power's own validation errors (CreateError, ModelfileError, GGUFError…)
        return 400, public_message(str(exc))
    return 500, internal_error(exc, context)
