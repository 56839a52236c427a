"""The registry's typed results written as Ollama's JSON: /api/show, /api/tags, details.

Empty strings and lists are left out of `show`, as Go's `omitempty` does; `model_info` is always
present. Times are Go's RFC3339Nano form.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from power.registry.models import ModelDetails, ModelEntry, ModelShow


def rfc3339(moment: datetime) -> str:
    """Go's RFC3339Nano form of a time: trailing sub-second zeros trimmed, `Z` for UTC."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() == 0:
        return text + "Z"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def details_json(details: ModelDetails) -> dict[str, Any]:
    return {
        "parent_model": details.parent_model,
        "format": details.format,
        "family": details.family,
        "families": list(details.families) if details.families is not None else None,
        "parameter_size": details.parameter_size,
        "quantization_level": details.quantization_level,
    }


def show_json(shown: ModelShow) -> dict[str, Any]:
    """The /api/show answer: license, modelfile, parameters, template, system, details,
    messages, model_info, projector_info (a vision model's projector header), capabilities,
    modified_at (and tensors when verbose)."""
    model, info = shown.model, shown.info
    answer: dict[str, Any] = {}
    if model.license:
        answer["license"] = "\n".join(model.license)
    answer["modelfile"] = shown.modelfile
    if shown.parameters:
        answer["parameters"] = shown.parameters
    answer["template"] = shown.template
    if model.system:
        answer["system"] = model.system
    if model.renderer:
        answer["renderer"] = model.renderer
    if model.parser:
        answer["parser"] = model.parser
    answer["details"] = details_json(model.details)
    if model.messages:
        answer["messages"] = [{"role": m.role, "content": m.content} for m in model.messages]
    answer["model_info"] = dict(info.model_info) if info is not None else {}
    if shown.projector_info is not None:
        answer["projector_info"] = dict(shown.projector_info.model_info)
    if shown.verbose and info is not None:
        answer["tensors"] = [
            {"name": t.name, "type": t.type, "shape": list(t.shape)} for t in info.tensors
        ]
    if model.capabilities:
        answer["capabilities"] = list(model.capabilities)
    answer["modified_at"] = rfc3339(model.modified_at)
    if model.requires:
        answer["requires"] = model.requires
    return answer


def entry_json(entry: ModelEntry) -> dict[str, Any]:
    """One model of /api/tags: name, model, modified_at, size, digest, details."""
    return {
        "name": entry.name.display,
        "model": entry.name.display,
        "modified_at": rfc3339(entry.modified_at),
        "size": entry.size,
        "digest": entry.digest,
        "details": details_json(entry.details),
    }
