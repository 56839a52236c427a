"""The version power reports (`power --version`, /api/version, the User-Agent of its clients),
and the Ollama release whose API and store power matches.

A model's `REQUIRES` (Ollama's minimum version, kept in the config blob as `requires`) is an
Ollama version: models from ollama.com carry values such as `0.12.0`. power compares it with
`OLLAMA_COMPATIBLE_VERSION`, not with its own version number, so that those models run.
"""

from __future__ import annotations

import re

__version__ = "0.1.0"

#: The Ollama release (August 2026) whose API, Modelfile and store power follows.
OLLAMA_COMPATIBLE_VERSION = "0.33.0"

_SEMVER = re.compile(
    r"v?(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)


def normalize_requires(text: str) -> str:
    """`text` as a REQUIRES value is stored: a semantic version without its `v` (Go's
    golang.org/x/mod/semver rules: `1`, `1.2`, `1.2.3`, `1.2.3-rc1`, `1.2.3+build`).
    Raises ValueError for anything else."""
    value = text.strip()
    if not _SEMVER.fullmatch(value):
        raise ValueError("requires must be a valid semver (e.g. 0.14.0)")
    return value.removeprefix("v")


def _key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    match = _SEMVER.fullmatch(version.strip())
    if match is None:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre = match.groups()
    release = (int(major), int(minor or 0), int(patch or 0))
    if pre is None:  # a release sorts after its pre-releases
        return (*release, 1, ())
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return (*release, 0, parts)


def compare_versions(left: str, right: str) -> int:
    """-1, 0 or 1 as semantic version `left` is older than, equal to or newer than `right`
    (build metadata ignored). Raises ValueError for an invalid version."""
    a, b = _key(left), _key(right)
    return (a > b) - (a < b)


def unmet_requirement(requires: str | None) -> str | None:
    """The error to answer when a model needs a newer Ollama than power is compatible with
    (`requires` as stored in its config); None when it runs here. An unreadable value is
    ignored (as Ollama's server never reads it back)."""
    if not requires:
        return None
    try:
        newer = compare_versions(requires, OLLAMA_COMPATIBLE_VERSION) > 0
    except ValueError:
        return None
    if not newer:
        return None
    return (
        f"this model requires Ollama {requires.removeprefix('v')} or newer; power "
        f"{__version__} is compatible with Ollama {OLLAMA_COMPATIBLE_VERSION}"
    )
