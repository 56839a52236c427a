"""The transport for pull and push: one OCI distribution registry repository over httpx.

`RegistryClient` talks to `<scheme>://<host>/v2/<namespace>/<model>/…` for one `ModelName`:
`https` by default, plain `http` when `insecure` is set (as Ollama does). It answers a
`401` carrying `WWW-Authenticate: Bearer realm=…,service=…,scope=…` by fetching an anonymous
token from the realm and repeating the request with it, and it retries transient failures
(timeouts, a connection dropped mid-exchange, 5xx, 429) with exponential backoff under a
`RetryPolicy`. Failures that cannot heal by waiting fail at once with a message that says
what happened: a host name that does not resolve, a refused connection, a TLS failure, any
other 4xx (`is_transient_transport_error`, `is_transient_status`).

Everything that goes wrong reaches callers as `RegistryError(message, status)`, whose message is
fit to show a user (the same wording Ollama uses where it has one, e.g.
`pull model manifest: file does not exist`).

The client never touches the store; `pull.py`, `push.py` and `update.py` do.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import trio

from power.version import __version__

if TYPE_CHECKING:
    from power.registry.names import ModelName

log = logging.getLogger(__name__)

#: The manifest media type Ollama pushes and asks for.
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

USER_AGENT = f"power/{__version__} (ollama-compatible)"

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class RegistryError(Exception):
    """A pull, push or update failed; `message` is fit to show a user, `status` is the HTTP
    status the registry answered (None when no answer came, e.g. a connection failure)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


@attrs.frozen
class RetryPolicy:
    """How often and how patiently to repeat a request that failed for a transient reason.

    The wait before retry `i` (0-based) is `first_delay * 2**i`, capped at `max_delay`; a 429's
    `Retry-After` (seconds) is honoured up to `max_delay`. `attempts` counts the first try.
    """

    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 16.0

    def delay(self, i_retry: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                return min(max(float(retry_after), 0.0), self.max_delay)
        return min(self.first_delay * (2**i_retry), self.max_delay)


def is_transient_status(status: int) -> bool:
    """5xx and 429 answers are worth repeating; everything else is final."""
    return status in _RETRY_STATUSES


# ---------------------------------------------------------------- Bearer challenges

_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_auth_params(text: str) -> dict[str, str]:
    """Parse `key="value", key2=value2` (RFC 7235 auth-params; quoted values may hold commas)."""
    params: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _AUTH_PARAM.match(text, position)
        if match is None or match.end() == position:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        position = match.end()
    return params


@attrs.frozen
class BearerChallenge:
    """The parameters of a `WWW-Authenticate: Bearer …` header."""

    realm: str
    service: str | None = None
    scope: str | None = None

    @classmethod
    def parse(cls, header: str | None) -> BearerChallenge | None:
        """The challenge in `header`, or None when it is absent or not a Bearer challenge."""
        if not header:
            return None
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        params = parse_auth_params(rest)
        realm = params.get("realm")
        if not realm:
            return None
        return cls(realm=realm, service=params.get("service"), scope=params.get("scope"))

    def token_request_params(self) -> dict[str, str]:
        params = {}
        if self.service:
            params["service"] = self.service
        if self.scope:
            params["scope"] = self.scope
        return params


def is_cancellation(error: BaseException) -> bool:
    """True for `trio.Cancelled` and for a group made only of them."""
    if isinstance(error, BaseExceptionGroup):
        return error.split(trio.Cancelled)[1] is None
    return isinstance(error, trio.Cancelled)


@contextlib.contextmanager
def single_registry_error() -> Iterator[None]:
    """Around a nursery: turn an exception group whose failures are `RegistryError`s (beside
    cancellations) into its first `RegistryError`, so callers see one clear message. Any other
    group (a bug, an OS error) passes unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, rest = group.split(RegistryError)
        if matched is None or (rest is not None and not is_cancellation(rest)):
            raise
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registry_base_url(name: ModelName, insecure: bool = False) -> str:
    """`https://<host>` for a name, or `http://<host>` when `insecure` (Ollama's rule).

    A name written with `http://` needs `insecure` too: `RegistryError("insecure protocol
    http", 400)` otherwise, as Ollama answers."""
    if getattr(name, "scheme", "https") == "http" and not insecure:
        raise RegistryError("insecure protocol http", 400)
    scheme = "http" if insecure else "https"
    return f"{scheme}://{name.host}"


def _error_message_from_body(response: httpx.Response) -> str | None:
    """The first `errors[].message` of an OCI error body (`{"errors": [{code, message}]}`)."""
    try:
        body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = errors[0].get("code")
            message = errors[0].get("message")
            if message and code:
                return f"{str(code).lower()}: {message}"
            if message:
                return str(message)
        if isinstance(body.get("error"), str):
            return body["error"]
    return None


def status_error(response: httpx.Response, action: str) -> RegistryError:
    """A `RegistryError` for an unexpected answer to `action` (e.g. `pull model manifest`)."""
    detail = _error_message_from_body(response)
    if response.status_code == 401:
        text = f"{action}: unauthorized" + (f" ({detail})" if detail else "")
    elif detail:
        text = f"{action}: {detail}"
    else:
        text = f"{action}: {response.status_code} {response.reason_phrase}".rstrip()
    return RegistryError(text, response.status_code)


def is_transient_transport_error(error: httpx.TransportError) -> bool:
    """Whether repeating the request may succeed: timeouts and connections that broke in the
    middle of an exchange (reset, closed early) may; a connection that could not be made at all
    (the name does not resolve, the port refuses, TLS fails) or a malformed request may not."""
    return isinstance(
        error,
        httpx.TimeoutException | httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError,
    )


def _os_causes(error: BaseException) -> list[OSError]:
    """The OSErrors under an httpx error: httpx and httpcore chain them with `from`, and trio
    gathers one per address tried (`all attempts to connect … failed`) in a group."""
    found: list[OSError] = []
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            found.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return found


def _transport_message(error: httpx.TransportError) -> str:
    """What went wrong on the network, in words a user can act on."""
    causes = _os_causes(error)
    url = None
    with contextlib.suppress(RuntimeError):  # an error raised without a request
        url = error.request.url
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}" if url else ""
    unresolved = [cause for cause in causes if isinstance(cause, socket.gaierror)]
    if unresolved:
        host = f" {url.host!r}" if url else ""
        return f"cannot resolve the registry host{host}: {unresolved[0].strerror or unresolved[0]}"
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return f"connection refused by {where or 'the registry'}: is the registry running?"
    return str(error) or type(error).__name__


# ---------------------------------------------------------------- the client


class RegistryClient:
    """One repository (`<namespace>/<model>`) on one registry host.

    Use as an async context manager (it owns an `httpx.AsyncClient`). `transport` replaces the
    network (tests wrap the real one to count bytes, or use `httpx.MockTransport`); `retry`
    sets how transient failures are repeated.
    """

    def __init__(
        self,
        name: ModelName,
        *,
        insecure: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self.base_url = registry_base_url(name, insecure)
        self.repository = name.repository
        self.retry = retry or RetryPolicy()
        self._token: str | None = None
        self._token_lock = trio.Lock()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            follow_redirects=True,
            timeout=httpx.Timeout(60.0, connect=30.0),
            headers={"User-Agent": USER_AGENT},
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------ paths

    def manifest_url(self, tag: str) -> str:
        return f"/v2/{self.repository}/manifests/{tag}"

    def blob_url(self, digest: str) -> str:
        return f"/v2/{self.repository}/blobs/{digest}"

    def uploads_url(self) -> str:
        return f"/v2/{self.repository}/blobs/uploads/"

    # ------------------------------------------------------------ the request core

    def _with_auth(self, headers: dict[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        if self._token:
            merged["Authorization"] = f"Bearer {self._token}"
        return merged

    async def _fetch_token(self, challenge: BearerChallenge) -> None:
        """Get an (anonymous) token from the challenge's realm and keep it for later requests."""
        try:
            response = await self._http.get(
                challenge.realm,
                params=challenge.token_request_params(),
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as error:
            raise RegistryError(
                f"get auth token from {challenge.realm}: {_transport_message(error)}"
            ) from error
        if response.status_code != 200:
            raise status_error(response, "get auth token")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError("get auth token: the realm answered without a token", 200)
        self._token = token

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        action: str,
        headers: dict[str, str] | None = None,
        content_factory: Callable[[], Any] | None = None,
        retry: bool = True,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield its response with the body not yet read.

        A 401 with a Bearer challenge is answered once with a fresh token; timeouts, broken
        connections, 5xx and 429 are retried under the policy (when `retry`) before the body is
        handed over. `content_factory()` must return a fresh body (bytes or an async iterator)
        for each attempt. Failures after the response is yielded are the caller's to handle.
        """
        attempts = self.retry.attempts if retry else 1
        answered_challenge = False
        i_attempt = 0
        while True:
            token_sent = self._token
            request = self._http.build_request(
                method,
                url,
                headers=self._with_auth(headers),
                content=content_factory() if content_factory is not None else None,
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as error:
                i_attempt += 1
                if i_attempt >= attempts or not is_transient_transport_error(error):
                    raise RegistryError(f"{action}: {_transport_message(error)}") from error
                delay = self.retry.delay(i_attempt - 1)
                log.info("%s: %s; retrying in %.1fs", action, error, delay)
                await trio.sleep(delay)
                continue

            if response.status_code == 401 and not answered_challenge:
                challenge = BearerChallenge.parse(response.headers.get("WWW-Authenticate"))
                await response.aclose()
                if challenge is None:
                    raise RegistryError(f"{action}: unauthorized", 401)
                answered_challenge = True
                async with self._token_lock:
                    if self._token == token_sent:  # nobody refreshed it meanwhile
                        await self._fetch_token(challenge)
                continue

            if is_transient_status(response.status_code) and i_attempt + 1 < attempts:
                retry_after = (
                    response.headers.get("Retry-After") if response.status_code == 429 else None
                )
                await response.aclose()
                delay = self.retry.delay(i_attempt, retry_after)
                i_attempt += 1
                log.info("%s: %d; retrying in %.1fs", action, response.status_code, delay)
                await trio.sleep(delay)
                continue

            try:
                yield response
            finally:
                await response.aclose()
            return

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        action: str,
        expected: Iterable[int] = (200,),
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send a request with a small body, read the answer and check its status.

        Raises `RegistryError` (built by `status_error`) when the status is not `expected`.
        """
        expected = tuple(expected)
        async with self.stream(
            method,
            url,
            action=action,
            headers=headers,
            content_factory=(lambda: content) if content is not None else None,
        ) as response:
            try:
                await response.aread()
            except httpx.TransportError as error:
                raise RegistryError(f"{action}: {_transport_message(error)}") from error
        if response.status_code not in expected:
            raise status_error(response, action)
        return response

    # ------------------------------------------------------------ manifests

    async def get_manifest(self, tag: str) -> bytes:
        """The manifest bytes exactly as served. An unknown name or tag raises
        `RegistryError("pull model manifest: file does not exist", 404)`."""
        action = "pull model manifest"
        async with self.stream(
            "GET",
            self.manifest_url(tag),
            action=action,
            headers={"Accept": MANIFEST_MEDIA_TYPE},
        ) as response:
            try:
                await response.aread()
            except httpx.TransportError as error:
                raise RegistryError(f"{action}: {_transport_message(error)}") from error
        if response.status_code == 404:
            raise RegistryError(f"{action}: file does not exist", 404)
        if response.status_code != 200:
            raise status_error(response, action)
        return response.content

    async def put_manifest(self, tag: str, manifest: bytes) -> None:
        await self.request(
            "PUT",
            self.manifest_url(tag),
            action="push manifest",
            expected=(200, 201, 202),
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            content=manifest,
        )

    # ------------------------------------------------------------ blobs

    async def blob_size(self, digest: str) -> int | None:
        """`HEAD` a blob: its size when the repository has it, None when it does not."""
        response = await self.request(
            "HEAD", self.blob_url(digest), action=f"check blob {digest}", expected=(200, 404)
        )
        if response.status_code == 404:
            return None
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else -1

    @contextlib.asynccontextmanager
    async def open_blob_range(
        self, digest: str, start: int, end: int, total: int
    ) -> AsyncIterator[httpx.Response]:
        """Yield the response to a ranged GET of bytes `start..end` (inclusive) of a blob.

        The status is checked (206, or 200 when the range is the whole blob); the caller reads
        the body with `aiter_bytes()` and handles failures while reading.
        """
        action = f"pull blob {digest}"
        async with self.stream(
            "GET",
            self.blob_url(digest),
            action=action,
            headers={"Range": f"bytes={start}-{end}"},
        ) as response:
            whole = start == 0 and end == total - 1
            if response.status_code == 404:
                await response.aread()
                raise RegistryError(f"{action}: file does not exist", 404)
            if not (response.status_code == 206 or (response.status_code == 200 and whole)):
                await response.aread()
                if response.status_code == 200:
                    raise RegistryError(f"{action}: the registry ignored a range request", 200)
                raise status_error(response, action)
            yield response

    async def start_upload(self) -> str:
        """`POST …/blobs/uploads/`: the Location to send the first chunk to."""
        response = await self.request(
            "POST", self.uploads_url(), action="start blob upload", expected=(202,)
        )
        return self._location(response, "start blob upload")

    def _location(self, response: httpx.Response, action: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{action}: the registry gave no upload location", 502)
        return str(response.request.url.join(location))

    async def upload_chunk(
        self, location: str, start: int, size: int, body_factory, *, digest: str
    ) -> str:
        """`PATCH` `size` bytes at offset `start`; answers the next Location.

        `body_factory()` gives an async iterator of the chunk's bytes. Not retried: a failed
        chunk leaves the upload in an unknown state, so the caller restarts the blob.
        """
        action = f"upload blob {digest}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Content-Range": f"{start}-{start + size - 1}",
        }
        async with self.stream(
            "PATCH",
            location,
            action=action,
            headers=headers,
            content_factory=body_factory,
            retry=False,
        ) as response:
            await response.aread()
        if response.status_code != 202:
            raise status_error(response, action)
        return self._location(response, action)

    async def finish_upload(self, location: str, digest: str) -> None:
        """`PUT <location>` with `digest=` merged into the query the Location already has."""
        url = httpx.URL(location).copy_merge_params({"digest": digest})
        action = f"upload blob {digest}"
        async with self.stream(
            "PUT",
            url,
            action=action,
            headers={"Content-Length": "0"},
            content_factory=lambda: b"",
            retry=False,
        ) as response:
            await response.aread()
        if response.status_code not in (201, 204):
            raise status_error(response, action)
