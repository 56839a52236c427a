"""Manifests and digests as Ollama writes them, and Go's JSON encoding that makes power's blobs
byte-identical to Ollama's for the same content (so they share digests).

A manifest is Docker schema 2: `{"schemaVersion":2,"mediaType":…,"config":{…},"layers":[…]}`;
each layer is `{"mediaType","digest","size"}` plus `"from"` (and Ollama's per-tensor `"name"`)
only when set. Digests are `sha256:<64 hex>`; `parse_digest` refuses anything else before a
path is built from it.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import attrs

MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_MODEL = "application/vnd.ollama.image.model"
MEDIA_TYPE_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TYPE_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_TYPE_DRAFT = "application/vnd.ollama.image.draft"  # a draft model (speculative decoding)
MEDIA_TYPE_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_TYPE_PROMPT = "application/vnd.ollama.image.prompt"  # old name of the template layer
MEDIA_TYPE_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_TYPE_PARAMS = "application/vnd.ollama.image.params"
MEDIA_TYPE_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_TYPE_LICENSE = "application/vnd.ollama.image.license"

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class StoreError(Exception):
    """Something in the store is wrong or missing (a 500 at the HTTP edge unless caught)."""


class InvalidDigestError(ValueError):
    """A digest that is not `sha256:<64 hex>` (Ollama's message: 'invalid digest format')."""


class DigestMismatchError(StoreError):
    """A file's sha256 is not the digest it was announced with."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class MissingBlobError(StoreError):
    """A manifest names a blob the store does not hold."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is missing from the store")
        self.digest = digest


def parse_digest(digest: str) -> str:
    """The lower-case hex of a `sha256:<hex>` digest (`sha256-<hex>` is accepted too).

    Raises InvalidDigestError for anything else, so no caller builds a path from a bad digest.
    """
    if not isinstance(digest, str):
        raise InvalidDigestError("invalid digest format")
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        raise InvalidDigestError(f"invalid digest format: {digest!r}")
    return match.group(1).lower()


def normalize_digest(digest: str) -> str:
    """`sha256:<lower-case hex>`."""
    return "sha256:" + parse_digest(digest)


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- Go's JSON encoding


def _go_float(value: float) -> str:
    """A float as Go's encoding/json writes a float64: shortest digits, fixed notation unless
    the magnitude is below 1e-6 or at least 1e21, integral values without '.0', 'e-7' not
    'e-07'."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"unsupported float value {value!r}")
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    magnitude = abs(value)
    if magnitude < 1e-6 or magnitude >= 1e21:
        text = repr(value)  # shortest digits; Python uses exponent form in this range too
        mantissa, _, exponent = text.partition("e")
        if mantissa.endswith(".0"):
            mantissa = mantissa[:-2]
        sign = exponent[0] if exponent[0] in "+-" else "+"
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        if len(digits) < 2 and sign == "+":
            digits = digits.rjust(2, "0")
        return f"{mantissa}e{sign}{digits}"
    text = format(decimal.Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


_GO_STRING_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _go_string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    for raw, escaped in _GO_STRING_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def _go_json(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_go_float(value))
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif isinstance(value, dict):
        out.append("{")
        for i_item, (key, item) in enumerate(value.items()):
            if i_item:
                out.append(",")
            out.append(_go_string(str(key)))
            out.append(":")
            _go_json(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i_item, item in enumerate(value):
            if i_item:
                out.append(",")
            _go_json(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def go_json_encode(value: Any, *, sort_keys: bool = False) -> bytes:
    """`value` as Go's `json.NewEncoder(w).Encode` writes it: compact, '<', '>' and '&' escaped
    as \\u003c/\\u003e/\\u0026, Go's float format, then a newline. Dicts keep their order
    (a Go struct's field order) unless `sort_keys` (a Go map: keys sorted), applied at every
    level. Identical content then gives identical blobs, and the same digests as Ollama."""
    if sort_keys:
        value = _sorted_keys(value)
    out: list[str] = []
    _go_json(value, out)
    out.append("\n")
    return "".join(out).encode("utf-8")


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted_keys(item) for item in value]
    return value


# ---------------------------------------------------------------- manifest


@attrs.define
class Layer:
    """One entry of a manifest: a blob with its media type. `from_` is Ollama's `from` (the model
    a layer was inherited from); `name` is Ollama's per-tensor layer name, kept when present."""

    media_type: str
    digest: str
    size: int
    from_: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Layer:
        if not isinstance(data, dict):
            raise ValueError("a manifest layer must be an object")
        media_type = data.get("mediaType")
        digest = data.get("digest")
        size = data.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise ValueError("a manifest layer needs a mediaType and a digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"layer {digest}: size must be a non-negative integer")
        normalize_digest(digest)  # validates
        from_ = data.get("from")
        name = data.get("name")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            from_=from_ if isinstance(from_, str) and from_ else None,
            name=name if isinstance(name, str) and name else None,
        )


@attrs.define
class Manifest:
    """A Docker schema-2 manifest as Ollama writes it."""

    config: Layer
    layers: list[Layer] = attrs.field(factory=list)
    schema_version: int = 2
    media_type: str = MEDIA_TYPE_MANIFEST

    def to_json(self) -> bytes:
        """Ollama's exact bytes: keys schemaVersion, mediaType, config, layers; compact; '\\n'."""
        return go_json_encode(
            {
                "schemaVersion": self.schema_version,
                "mediaType": self.media_type,
                "config": self.config.to_dict(),
                "layers": [layer.to_dict() for layer in self.layers],
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse a manifest; raises ValueError when it is not a valid schema-2 manifest."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"manifest is not JSON: {error}") from None
        if not isinstance(obj, dict):
            raise ValueError("manifest must be a JSON object")
        config = obj.get("config")
        if config is None:
            raise ValueError("manifest has no config")
        layers = obj.get("layers") or []
        if not isinstance(layers, list):
            raise ValueError("manifest layers must be a list")
        schema_version = obj.get("schemaVersion", 2)
        return cls(
            config=Layer.from_dict(config),
            layers=[Layer.from_dict(layer) for layer in layers],
            schema_version=schema_version if isinstance(schema_version, int) else 2,
            media_type=obj.get("mediaType") or MEDIA_TYPE_MANIFEST,
        )

    @property
    def size(self) -> int:
        """Bytes of all layers and the config (what /api/tags reports)."""
        return self.config.size + sum(layer.size for layer in self.layers)

    def digests(self) -> list[str]:
        """Every blob the manifest references, config included, each once, in order."""
        seen: list[str] = []
        for layer in [*self.layers, self.config]:
            if layer.digest not in seen:
                seen.append(layer.digest)
        return seen

    def layers_of(self, *media_types: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type in media_types]
