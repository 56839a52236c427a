"""Model names as Ollama spells them: `[scheme://][host/][namespace/]model[:tag]`.

A name has four parts; missing ones take Ollama's defaults (`registry.ollama.ai`, `library`,
`latest`). Each part has a character set and a length range (Ollama's, see
types/model/name.go):

| part      | first character   | then                 | length |
|-----------|-------------------|----------------------|--------|
| host      | `[A-Za-z0-9_]`    | `[A-Za-z0-9_.:-]`    | 1–350  |
| namespace | `[A-Za-z0-9_]`    | `[A-Za-z0-9_-]`      | 1–80   |
| model     | `[A-Za-z0-9_]`    | `[A-Za-z0-9_.-]`     | 1–80   |
| tag       | `[A-Za-z0-9_]`    | `[A-Za-z0-9_.-]`     | 1–80   |

Because no part may start with `.` and none may hold `/`, `\\` or NUL, a valid name can never
climb out of the store's `manifests/` folder (`..`, absolute paths and the like are refused).
Lookups in the store are case-insensitive (`ModelName.key`); the parts keep the case they were
written with.
"""

from __future__ import annotations

import re

import attrs

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART_PATTERNS = {
    "host": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"), 350),
    "namespace": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*"), 80),
    "model": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"), 80),
    "tag": (re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"), 80),
}


class InvalidNameError(ValueError):
    """A model name that Ollama would refuse (answered with 400 at the HTTP edge)."""


def _check_part(kind: str, value: str, text: str) -> None:
    pattern, max_length = _PART_PATTERNS[kind]
    if not value:
        raise InvalidNameError(f"invalid model name {text!r}: the {kind} is empty")
    if len(value) > max_length:
        raise InvalidNameError(
            f"invalid model name {text!r}: the {kind} is longer than {max_length} characters"
        )
    if not pattern.fullmatch(value):
        first = "must start with a letter, a digit or '_'"
        allowed = {
            "host": "letters, digits, '_', '.', ':' and '-'",
            "namespace": "letters, digits, '_' and '-'",
            "model": "letters, digits, '_', '.' and '-'",
            "tag": "letters, digits, '_', '.' and '-'",
        }[kind]
        raise InvalidNameError(
            f"invalid model name {text!r}: the {kind} {value!r} {first} and may only hold {allowed}"
        )


@attrs.frozen
class ModelName:
    """A fully qualified, validated model name. Build one with `ModelName.parse`.

    `scheme` is the protocol written before the host (`http://host/ns/model`), "https" when
    none was given; it plays no part in equality or in the store path.
    """

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = attrs.field(default="https", eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        text = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        for kind in ("host", "namespace", "model", "tag"):
            _check_part(kind, getattr(self, kind), text)

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse `[scheme://][host/][namespace/]model[:tag]`, filling in Ollama's defaults.

        Raises InvalidNameError with a message that says which part is wrong.
        """
        if not isinstance(text, str):
            raise InvalidNameError(f"invalid model name {text!r}: not a string")
        original = text
        if not text.strip():
            raise InvalidNameError("invalid model name: the name is empty")
        if "\x00" in text:
            raise InvalidNameError(f"invalid model name {original!r}: it contains a NUL character")
        if "\\" in text:
            raise InvalidNameError(f"invalid model name {original!r}: '\\' is not allowed")
        if text.startswith("/"):
            raise InvalidNameError(
                f"invalid model name {original!r}: a name is not a path (it starts with '/')"
            )
        scheme = "https"
        if "://" in text:
            scheme, text = text.split("://", 1)
            if scheme not in ("http", "https"):
                raise InvalidNameError(
                    f"invalid model name {original!r}: unknown scheme {scheme!r}"
                )
        tag = DEFAULT_TAG
        # ':' after the last '/' separates the tag (a host may carry a port: 'host:5000/ns/m').
        if text.rfind(":") > text.rfind("/"):
            text, tag = text.rsplit(":", 1)
            if not tag:
                raise InvalidNameError(f"invalid model name {original!r}: the tag is empty")
        parts = text.split("/")
        if len(parts) > 3:
            raise InvalidNameError(
                f"invalid model name {original!r}: expected [host/][namespace/]model[:tag]"
            )
        if any(part in ("", ".", "..") for part in parts):
            raise InvalidNameError(
                f"invalid model name {original!r}: empty, '.' or '..' parts are not allowed"
            )
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        try:
            return cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)
        except InvalidNameError as error:
            # re-word with the text the caller gave
            message = str(error).split(": ", 1)[1]
            raise InvalidNameError(f"invalid model name {original!r}: {message}") from None

    @classmethod
    def is_valid(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except InvalidNameError:
            return False
        return True

    def __str__(self) -> str:
        """The full form, `host/namespace/model:tag`."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The shortest form Ollama prints: `model:tag`, `namespace/model:tag` or the full form
        when the host is not the default one (defaults compared case-insensitively)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Lower-cased full form: two names with equal keys are the same model in the store."""
        return str(self).lower()

    def same_model(self, other: ModelName) -> bool:
        """Equal ignoring case (Ollama's EqualFold)."""
        return self.key == other.key

    def path_parts(self) -> tuple[str, str, str, str]:
        """(host, namespace, model, tag): the manifest lives at manifests/<host>/<ns>/<model>/<tag>."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def repository(self) -> str:
        """`namespace/model`, the repository path of the registry API."""
        return f"{self.namespace}/{self.model}"

    @classmethod
    def from_path_parts(cls, parts: tuple[str, ...] | list[str]) -> ModelName:
        """The name of a manifest file from its four path components under manifests/."""
        if len(parts) != 4:
            raise InvalidNameError(f"invalid manifest path {'/'.join(parts)!r}")
        host, namespace, model, tag = parts
        return cls(host=host, namespace=namespace, model=model, tag=tag)
