"""Store-level model operations behind /api/show, /api/tags, /api/copy, /api/delete and
/api/create: the HTTP handlers parse the request, call one function here and write the typed
result as JSON (`power.http.model_json`).

Errors: `ModelNotFoundError` (404, message `model 'NAME' not found`), `InvalidNameError` and
`CreateError` (400), `StoreError` (500). Messages never name a path of the server: an OSError
leaves as a StoreError saying what failed and why. All functions block on file I/O (create may
hash, convert or quantize gigabytes): call them through `trio.to_thread.run_sync`.

They read the store on every call (no cache), so a replica sees what another process changed.
A model deleted while it is being read is not found (404), never a missing-file error.

How power differs from Ollama here, on purpose:
- layers made from uploaded files carry no `from` (Ollama writes the upload's file name), so
  `show` → Modelfile → `create` rebuilds a byte-identical manifest;
- `show`'s Modelfile has a TEMPLATE line only when the model has a template layer (Ollama
  prints its default `{{ .Prompt }}`, which would add a layer on re-create);
- the config blob has no `rootfs` (as Ollama since August 2026; nothing ever read it).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import attrs

from power.gotemplate.values import format_float_v, go_quote
from power.messages import Message
from power.options import OPTION_TYPES, OptionError, coerce_option
from power.registry.create import CreateRequest, create_model
from power.registry.gguf_meta import GGUFInfo, read_gguf_info, read_gguf_info_cached
from power.registry.modelfile import format_modelfile
from power.registry.names import ModelName
from power.registry.store import (
    MEDIA_TYPE_ADAPTER,
    MEDIA_TYPE_DRAFT,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_PROJECTOR,
    MEDIA_TYPE_PROMPT,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Manifest,
    ModelNotFoundError,
    Store,
    StoreError,
    public_os_error,
)

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _without_paths(action: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """An OSError from the wrapped function leaves as `public_os_error(error, action)`."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return function(*args, **kwargs)
            except OSError as error:
                raise public_os_error(error, action) from None

        return wrapper

    return decorate


#: What Ollama shows as the template of a model that has none.
DEFAULT_TEMPLATE = "{{ .Prompt }}"

#: The order capabilities are listed in.
CAPABILITY_ORDER = ("completion", "embedding", "vision", "tools", "insert", "thinking")


@attrs.frozen
class ModelDetails:
    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


@attrs.define
class ResolvedModel:
    """Everything the server needs to run a stored model. Paths point into the store's blobs.

    `template` is the model's TEMPLATE layer (Go text/template) or None; `chat_template` is the
    GGUF's `tokenizer.chat_template` (Jinja) or None. `params` holds the Modelfile parameters,
    typed by `power.options` (`stop` is a list); unknown keys in the blob are dropped.
    `draft_path` is the draft model's GGUF (Modelfile `DRAFT`, for speculative decoding) or None;
    `renderer`, `parser` and `requires` come from the config blob ("" when absent).
    """

    name: ModelName
    digest: str  # sha256 hex of the manifest file
    size: int
    modified_at: datetime
    manifest: Manifest
    config: dict[str, Any]
    model_path: Path | None
    adapter_paths: list[Path]
    projector_paths: list[Path]
    template: str | None
    system: str | None
    params: dict[str, Any]
    messages: list[Message]
    license: list[str]
    details: ModelDetails
    capabilities: list[str]
    info: GGUFInfo | None
    draft_path: Path | None = None

    @property
    def renderer(self) -> str:
        return _config_text(self.config, "renderer")

    @property
    def parser(self) -> str:
        return _config_text(self.config, "parser")

    @property
    def requires(self) -> str:
        return _config_text(self.config, "requires")

    @property
    def projector_path(self) -> Path | None:
        return self.projector_paths[0] if self.projector_paths else None

    @property
    def chat_template(self) -> str | None:
        return self.info.chat_template if self.info is not None else None

    @property
    def context_length(self) -> int | None:
        return self.info.context_length if self.info is not None else None


def _config_text(config: dict[str, Any], key: str) -> str:
    value = config.get(key)
    return value if isinstance(value, str) else ""


def parse_name(name: str | ModelName) -> ModelName:
    """A ModelName from request text (raises InvalidNameError) or as is."""
    return name if isinstance(name, ModelName) else ModelName.parse(name)


def _display(name: str | ModelName) -> str:
    return name.display if isinstance(name, ModelName) else name


# ---------------------------------------------------------------- resolve


@_without_paths("read model")
def resolve(store: Store, name: str | ModelName) -> ResolvedModel:
    """Read the model `name` from the store. Raises ModelNotFoundError, InvalidNameError, or
    StoreError when the manifest or a layer it names is unreadable. A model deleted (or
    replaced) by another request or process while it is read is not found (or read again)."""
    model_name = parse_name(name)
    for _attempt in range(3):
        data = store.read_manifest_bytes(model_name)
        try:
            return _resolve_once(store, name, model_name)
        except StoreError:
            now = store.read_manifest_bytes(model_name)
            if now is None:
                raise ModelNotFoundError(_display(name)) from None
            if now == data:
                raise
    return _resolve_once(store, name, model_name)


def _resolve_once(store: Store, name: str | ModelName, model_name: ModelName) -> ResolvedModel:
    path = store.find_manifest_path(model_name)
    if path is None:
        raise ModelNotFoundError(_display(name))
    stored_name = store.stored_name(model_name) or model_name
    try:
        data = path.read_bytes()
        modified_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ModelNotFoundError(_display(name)) from None
    try:
        manifest = Manifest.from_json(data)
    except ValueError as error:
        raise StoreError(f"manifest of {stored_name.display} is invalid: {error}") from None

    config = _read_json_blob(store, manifest.config.digest, default={})
    if not isinstance(config, dict):
        config = {}
    model_path = None
    parent_model = ""
    adapters: list[Path] = []
    projectors: list[Path] = []
    draft_path = None
    template = system = None
    params: dict[str, Any] = {}
    messages: list[Message] = []
    licenses: list[str] = []
    for layer in manifest.layers:
        media = layer.media_type
        if media == MEDIA_TYPE_MODEL:
            model_path = store.blob_path(layer.digest)
            parent_model = layer.from_ or ""
        elif media == MEDIA_TYPE_ADAPTER:
            adapters.append(store.blob_path(layer.digest))
        elif media == MEDIA_TYPE_PROJECTOR:
            projectors.append(store.blob_path(layer.digest))
        elif media == MEDIA_TYPE_DRAFT:
            draft_path = store.blob_path(layer.digest)
        elif media in (MEDIA_TYPE_TEMPLATE, MEDIA_TYPE_PROMPT):
            template = _read_text_blob(store, layer.digest)
        elif media == MEDIA_TYPE_SYSTEM:
            system = _read_text_blob(store, layer.digest)
        elif media == MEDIA_TYPE_PARAMS:
            params = typed_params(_read_json_blob(store, layer.digest, default={}))
        elif media == MEDIA_TYPE_MESSAGES:
            messages = messages_from_json(_read_json_blob(store, layer.digest, default=[]))
        elif media == MEDIA_TYPE_LICENSE:
            licenses.append(_read_text_blob(store, layer.digest))

    if model_path is not None and not model_path.is_file():
        digest = manifest.layers_of(MEDIA_TYPE_MODEL)[0].digest
        raise StoreError(f"blob {digest} of {stored_name.display} is missing from the store")
    info = None
    if model_path is not None and config.get("model_format", "gguf") in ("", "gguf"):
        try:
            info = read_gguf_info_cached(model_path)
        except (OSError, ValueError) as error:
            log.warning("cannot read the GGUF header of %s: %s", stored_name.display, error)

    details = _details(config, info, parent_model)
    return ResolvedModel(
        name=stored_name,
        digest=hashlib.sha256(data).hexdigest(),
        size=manifest.size,
        modified_at=datetime.fromtimestamp(modified_ns / 1e9).astimezone(),
        manifest=manifest,
        config=config,
        model_path=model_path,
        adapter_paths=adapters,
        projector_paths=projectors,
        template=template,
        system=system,
        params=params,
        messages=messages,
        license=licenses,
        details=details,
        capabilities=capabilities_of(info, template, bool(projectors), config),
        info=info,
        draft_path=draft_path,
    )


def _read_text_blob(store: Store, digest: str) -> str:
    try:
        return store.blob_path(digest).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"blob {digest} is missing from the store") from None


def _read_json_blob(store: Store, digest: str, default: Any) -> Any:
    try:
        return json.loads(store.blob_path(digest).read_bytes())
    except FileNotFoundError:
        raise StoreError(f"blob {digest} is missing from the store") from None
    except ValueError:
        log.warning("blob %s is not valid JSON; ignored", digest)
        return default


def typed_params(raw: Any) -> dict[str, Any]:
    """A params blob's values typed by power.options; unknown or ill-typed keys are dropped
    with a warning (models pulled from Ollama's registry may carry options power lacks)."""
    params: dict[str, Any] = {}
    if not isinstance(raw, dict):
        return params
    for key, value in raw.items():
        if key not in OPTION_TYPES:
            log.warning("ignoring unknown parameter %r of a model", key)
            continue
        try:
            params[key] = coerce_option(key, value)
        except OptionError as error:
            log.warning("ignoring parameter %r of a model: %s", key, error)
    return params


def messages_from_json(raw: Any) -> list[Message]:
    """The messages layer (a JSON list of Ollama messages) as power Messages."""
    messages = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        images = []
        for image in item.get("images") or []:
            try:
                images.append(base64.b64decode(image))
            except (ValueError, TypeError):
                continue
        messages.append(
            Message(
                role=str(item.get("role", "")).lower(),
                content=str(item.get("content") or ""),
                images=images,
                thinking=str(item.get("thinking") or ""),
                tool_name=str(item.get("tool_name") or ""),
                tool_call_id=str(item.get("tool_call_id") or ""),
            )
        )
    return messages


def _details(config: dict[str, Any], info: GGUFInfo | None, parent_model: str) -> ModelDetails:
    families = config.get("model_families")
    quantization = config.get("file_type") or ""
    if quantization in ("", "unknown") and info is not None:
        quantization = info.quantization_level
    return ModelDetails(
        parent_model=parent_model,
        format=config.get("model_format") or "gguf",
        family=config.get("model_family") or (info.family if info else ""),
        families=list(families)
        if isinstance(families, list)
        else (info.families if info else None),
        parameter_size=config.get("model_type") or (info.parameter_size if info else ""),
        quantization_level=quantization,
    )


_TOOLS_VAR = re.compile(r"\{\{[^{}]*\.Tools\b", re.IGNORECASE)
_SUFFIX_VAR = re.compile(r"\{\{[^{}]*\.Suffix\b", re.IGNORECASE)


def template_capabilities(template: str | None) -> list[str]:
    """Capabilities a Go TEMPLATE grants: tools (uses .Tools), insert (uses .Suffix), thinking
    (writes <think>…</think> tags)."""
    if not template:
        return []
    found = []
    if _TOOLS_VAR.search(template):
        found.append("tools")
    if _SUFFIX_VAR.search(template):
        found.append("insert")
    if "<think>" in template and "</think>" in template:
        found.append("thinking")
    return found


def capabilities_of(
    info: GGUFInfo | None, template: str | None, has_projector: bool, config: dict[str, Any]
) -> list[str]:
    """The union of what the GGUF metadata, the TEMPLATE layer, a projector and the config
    declare, in CAPABILITY_ORDER (unknown names from the config last)."""
    found: set[str] = set(info.capabilities if info is not None else [])
    found.update(template_capabilities(template))
    if has_projector:
        found.add("vision")
    extra = [c for c in config.get("capabilities") or [] if isinstance(c, str)]
    found.update(extra)
    ordered = [c for c in CAPABILITY_ORDER if c in found]
    return ordered + sorted(found - set(CAPABILITY_ORDER))


# ---------------------------------------------------------------- show, tags


def format_parameters(params: dict[str, Any]) -> str:
    """/api/show's `parameters`: one `name value` line per value (lists expanded), the name
    padded to 30 columns and the value as Go's %#v prints it (strings quoted)."""
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                shown = "true" if item else "false"
            elif isinstance(item, float):
                shown = format_float_v(item)
            elif isinstance(item, str):
                shown = go_quote(item)
            else:
                shown = str(item)
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


def modelfile_of(model: ResolvedModel) -> str:
    """The Modelfile `show` prints; `create` with it rebuilds the same model."""
    header = (
        '# Modelfile generated by "power show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {model.name.display}\n\n"
    )
    sources = [str(model.model_path)] if model.model_path is not None else []
    sources += [str(path) for path in model.projector_paths]
    return format_modelfile(
        sources=sources,
        adapters=[str(path) for path in model.adapter_paths],
        template=model.template,
        system=model.system,
        parameters=model.params,
        license=model.license,
        messages=model.messages,
        draft=str(model.draft_path) if model.draft_path is not None else None,
        renderer=model.renderer or None,
        parser=model.parser or None,
        requires=model.requires or None,
        header=header,
    )


@attrs.define
class ModelShow:
    """What /api/show tells of a model; `power.http.model_json.show_json` writes it as JSON.

    `template` is the TEMPLATE layer, else the GGUF's chat template, else Ollama's default;
    `parameters` the PARAMETERs as Ollama prints them; `info` the GGUF header (with the token
    lists and the tensors when `verbose`), None when the model has none; `projector_info` the
    vision projector's GGUF header, None without a projector."""

    model: ResolvedModel
    modelfile: str
    parameters: str
    template: str
    info: GGUFInfo | None
    verbose: bool
    projector_info: GGUFInfo | None = None


@attrs.define
class ModelEntry:
    """One model of /api/tags (newest first), /v1/models and the CLI's `list`."""

    name: ModelName
    modified_at: datetime  # local time
    size: int
    digest: str  # sha256 hex of the manifest file
    details: ModelDetails


@_without_paths("show model")
def show(store: Store, name: str | ModelName, verbose: bool = False) -> ModelShow:
    """What /api/show answers for `name` (see `ModelShow`). Raises ModelNotFoundError."""
    model = resolve(store, name)
    info = model.info
    if verbose and model.model_path is not None and info is not None:
        info = read_gguf_info(model.model_path, verbose=True)
    projector_info = None
    if model.projector_path is not None:
        try:
            projector_info = read_gguf_info(model.projector_path, verbose=verbose)
        except (OSError, ValueError) as error:
            log.warning("cannot read the projector of %s: %s", model.name.display, error)
    return ModelShow(
        model=model,
        modelfile=modelfile_of(model),
        parameters=format_parameters(model.params),
        template=model.template or model.chat_template or DEFAULT_TEMPLATE,
        info=info,
        verbose=verbose,
        projector_info=projector_info,
    )


@_without_paths("list models")
def list_models(store: Store) -> list[ModelEntry]:
    """Every model of the store, newest first."""
    entries = []
    for stored in store.list_models():
        config = {}
        if store.has_blob(stored.manifest.config.digest):
            try:
                config = _read_json_blob(store, stored.manifest.config.digest, default={})
            except StoreError:
                config = {}
        if not isinstance(config, dict):
            config = {}
        model_layers = stored.manifest.layers_of(MEDIA_TYPE_MODEL)
        parent = model_layers[0].from_ or "" if model_layers else ""
        info = None
        if model_layers and not (config.get("model_family") and config.get("file_type")):
            try:
                info = read_gguf_info_cached(store.blob_path(model_layers[0].digest))
            except (OSError, ValueError):
                info = None
        entries.append(
            ModelEntry(
                name=stored.name,
                modified_at=stored.modified_at.astimezone(),
                size=stored.size,
                digest=stored.digest,
                details=_details(config, info, parent),
            )
        )
    entries.sort(key=lambda entry: entry.modified_at.timestamp(), reverse=True)
    return entries


# ---------------------------------------------------------------- copy, delete


@_without_paths("copy model")
def copy(store: Store, source: str | ModelName, destination: str | ModelName) -> None:
    """Give the model `source` a second name (the manifest is copied under the store lock;
    blobs are shared). The blobs only a replaced `destination` used are removed, as create
    does, unless `store.noprune`. Raises ModelNotFoundError, InvalidNameError."""
    source_name = parse_name(source)
    destination_name = parse_name(destination)
    with store.lock():
        try:
            replaced = store.read_manifest(destination_name)
        except StoreError:
            replaced = None
        if not store.copy_manifest(source_name, destination_name):
            raise ModelNotFoundError(_display(source))
        if replaced is not None and not store.noprune:
            store.remove_unreferenced(replaced.digests())


@_without_paths("delete model")
def delete(store: Store, name: str | ModelName) -> None:
    """Remove the model `name`, then the blobs only it used (as Ollama does, whatever
    `noprune`; blobs another operation pins stay), then prune the store unless
    `store.noprune`. The manifest and its blobs go under the store lock, so a concurrent
    create, copy or pull sees the model whole or not at all. Raises ModelNotFoundError."""
    model_name = parse_name(name)
    with store.lock():
        try:
            manifest = store.read_manifest(model_name)
        except StoreError:
            manifest = None
            if store.find_manifest_path(model_name) is None:
                raise ModelNotFoundError(_display(name)) from None
        if not store.delete_manifest(model_name):
            raise ModelNotFoundError(_display(name))
        if manifest is not None:
            store.remove_unreferenced(manifest.digests())
    if not store.noprune:
        store.prune()


# ---------------------------------------------------------------- create


@_without_paths("create model")
def create(
    store: Store,
    request: CreateRequest,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Build a model as /api/create does and write its manifest last; see
    `power.registry.create.create_model` for the rules. Raises CreateError,
    InvalidNameError, ModelNotFoundError (FROM an unknown model)."""
    create_model(store, request, progress or (lambda _status: None))


@_without_paths("import model")
def import_gguf(
    store: Store,
    name: str,
    gguf_path: Path | str,
    *,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ResolvedModel:
    """Copy the GGUF file at `gguf_path` into the store and create `name` from it (with an
    optional template, system prompt and parameters). Returns the resolved model."""
    gguf_path = Path(gguf_path)
    digest = store.add_blob_file(gguf_path, move=False)
    request = CreateRequest(
        model=name,
        files={gguf_path.name: digest},
        template=template,
        system=system,
        parameters=dict(parameters or {}),
    )
    create(store, request, progress)
    return resolve(store, name)
