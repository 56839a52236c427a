"""`create`: build a model in the store from a request shaped like Ollama's /api/create.

The base comes from one of:
- `from` naming a model in the store: its layers are inherited (each gets `from: <name>`);
- `files` `{file name: digest}` naming uploaded blobs: GGUF files (model, projector or adapter,
  told apart by their metadata) or a safetensors folder's files (converted to GGUF);
- power's extension: `from` an absolute local path (`/…`, `~/…`) of a GGUF file (copied in), of
  a safetensors folder (converted by `power.convert.converter.convert_folder`), or of a folder of
  GGUF files (each copied in: a model and its vision projector); which `from` values are paths,
  and who may use them, is `power.registry.local_paths`'s one rule. The CLI uses it for
  `FROM ./folder` of safetensors (sent absolute) when the server runs on the same machine.
- power's extension: `from` together with `files` adds the uploaded vision projector(s) to the
  base (Ollama ignores `files` when `from` is set): `FROM llava:7b` + `FROM ./mmproj.gguf`.

A draft model (Modelfile `DRAFT`, for speculative decoding) comes from `draft_files` (uploaded
GGUF blobs, Ollama's field) or, power's extension, from `draft`: a model of the store (its model
layer is shared) or an absolute local path, under the same rule as `from`. It becomes one
`application/vnd.ollama.image.draft` layer (replacing an inherited one) and the config's
`draft: {model_format, architecture}`, as Ollama stores it. `renderer`, `parser` and `requires`
go into the config blob (inherited from a `from` model unless given); a model that requires a
newer Ollama than power follows (`power.version.unmet_requirement`) is refused.

A vision projector (a GGUF whose `general.type` is `mmproj`/`projector`, or a `clip` file with a
vision encoder) becomes an `application/vnd.ollama.image.projector` layer beside the model
layer, as in Ollama's store; a projector added to a base replaces the base's.
Then `adapters`, an optional `quantize` of the model layer (F16/BF16/F32 sources only, through
llama.cpp's `llama_model_quantize`), and layers for template, system, license, params and
messages, as Ollama lays them out (params are merged with inherited ones; the other text
layers replace inherited ones). The config blob and finally the manifest are written.

Progress dicts carry Ollama's status texts: "parsing GGUF", "converting model", "quantizing F16
model to Q4_K_M", "using existing layer sha256:…", "creating new layer sha256:…",
"writing manifest", "success". A failing create writes no manifest; blobs it created that no
manifest references are removed again, and its temporaries are deleted (after a crash, the next
`Store.prune` does both).

Races with other requests and processes: every blob the new model will use is pinned
(`Store.pins`) before create checks that it exists (a source model's layers are pinned under
the store lock together with reading its manifest), so a concurrent delete or prune cannot
take them away; the manifest is written under the store lock. `from` a model deleted before
create read it is a ModelNotFoundError (404). Errors name no path of the server.
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from power.messages import Message
from power.options import OptionError, coerce_option
from power.registry.gguf_meta import (
    GGUFError,
    GGUFInfo,
    file_type_from_name,
    file_type_name,
    is_gguf_file,
    read_gguf_info_cached,
)
from power.registry.local_paths import LocalPathError, local_source_path, names_a_path
from power.registry.modelfile import gguf_files_in_folder
from power.registry.names import ModelName
from power.registry.store import (
    MEDIA_TYPE_ADAPTER,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DRAFT,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_PROJECTOR,
    MEDIA_TYPE_PROMPT,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    InvalidDigestError,
    Layer,
    Manifest,
    ModelNotFoundError,
    Pins,
    Store,
    StoreError,
    go_json_encode,
    normalize_digest,
    public_os_error,
)
from power.version import normalize_requires, unmet_requirement

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

#: Source file types llama.cpp can quantize from (Ollama's rule).
QUANTIZABLE_FROM = ("F16", "BF16", "F32")


class CreateError(ValueError):
    """The create request cannot be honoured as given (a 400 at the HTTP edge)."""


@attrs.define(kw_only=True)
class CreateRequest:
    """Ollama's /api/create request, as power honours it: the one create request type.

    `power.http` parses the JSON body into it (`from` is `from_`, `name` and `quantization` are
    the old spellings of `model` and `quantize`); Python callers build it directly. `files` and
    `adapters` map file names to blob digests; `parameters` are typed by `power.options` when the
    params layer is written; `stream` is for the HTTP route only (create reports progress through
    its callback either way). `draft` is power's spelling of a draft model by name or absolute
    path; `draft_files` is Ollama's (uploaded blobs). Empty strings and None mean "not given"."""

    model: str = ""
    from_: str = ""
    files: dict[str, str] = attrs.field(factory=dict)
    adapters: dict[str, str] = attrs.field(factory=dict)
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
    messages: list[Message] = attrs.field(factory=list)
    quantize: str = ""
    draft: str = ""
    draft_files: dict[str, str] = attrs.field(factory=dict)
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    stream: bool = True


@attrs.define
class _Built:
    """A layer of the model being built, the status line Ollama prints for it, and the GGUF
    header when it is a GGUF layer."""

    layer: Layer
    status: str
    info: GGUFInfo | None = None


def _status(digest: str, new: bool) -> str:
    return f"{'creating new' if new else 'using existing'} layer {digest}"


def create_model(store: Store, request: CreateRequest, progress: Progress) -> None:
    """Create `request.model` in `store` (see the module docstring). Raises CreateError,
    InvalidNameError, ModelNotFoundError; on any failure no manifest is written."""
    name = ModelName.parse(request.model)
    name = store.stored_name(name) or name
    try:
        old_manifest = store.read_manifest(name)
    except StoreError:
        old_manifest = None

    def emit(status: str) -> None:
        progress({"status": status})

    created: list[str] = []  # and then the borrowed digests: what may be garbage at the end
    try:
        with (
            store.pins() as pins,
            tempfile.TemporaryDirectory(prefix="create-", dir=store.temp_dir()) as work_dir,
        ):
            job = _Job(store, pins, emit, Path(work_dir), created)
            try:
                manifest = _build(job, name, request)
            finally:
                created += job.borrowed
    except OSError as error:
        _remove_created(store, created)
        raise public_os_error(error, "create model") from None
    except BaseException:
        _remove_created(store, created)
        raise
    # A delete that raced this create may have removed the new manifest (or the source model)
    # while their blobs were pinned: they go now, as they would have gone with it.
    replaced = set(old_manifest.digests()) - set(manifest.digests()) if old_manifest else set()
    store.remove_unreferenced([*created, *(() if store.noprune else replaced)])
    emit("success")


def _build(job: _Job, name: ModelName, request: CreateRequest) -> Manifest:
    """Every layer, the config, then the manifest of the model (see `create_model`)."""
    store, emit = job.store, job.emit
    base_config: dict[str, Any] = {}
    if request.from_:
        layers, base_config = _from_source(job, request.from_)
        if request.files:
            layers = _with_projectors(layers, _from_files(job, request.files, False))
    elif request.files:
        layers = _from_files(job, request.files, False)
    else:
        raise CreateError("neither 'from' or 'files' was specified")
    if request.adapters:
        layers += _from_files(job, request.adapters, True)
    if request.draft or request.draft_files:
        draft = _draft_layer(job, request)
        layers = [b for b in layers if b.layer.media_type != MEDIA_TYPE_DRAFT] + [draft]
    if request.quantize:
        layers = [
            _quantized(job, built, request.quantize)
            if built.layer.media_type == MEDIA_TYPE_MODEL
            else built
            for built in layers
        ]
    config = _config(layers, base_config, request)
    unmet = unmet_requirement(config.get("requires"))
    if unmet is not None:
        raise CreateError(unmet)
    layers = _with_text_layers(job, layers, request)
    config_data = go_json_encode(config)
    config_digest, _new = job.store_bytes(config_data)
    manifest = Manifest(
        config=Layer(MEDIA_TYPE_CONFIG, config_digest, len(config_data)),
        layers=[built.layer for built in layers],
    )
    for built in layers:
        emit(built.status)
    emit("writing manifest")
    store.write_manifest(name, manifest)
    return manifest


def _remove_created(store: Store, created: list[str]) -> None:
    try:
        store.remove_unreferenced(created)
    except Exception:  # the original error matters more
        log.exception("could not remove the blobs of a failed create")


@attrs.define
class _Job:
    """One create's context: the store, its pins, its status callback, its work folder, the
    digests of the blobs it added (removed again if it fails) and of those it took from a model
    of the store (removed if that model was deleted meanwhile and nothing else uses them)."""

    store: Store
    pins: Pins
    emit: Callable[[str], None]
    work: Path
    created: list[str]
    borrowed: list[str] = attrs.Factory(list)

    def store_bytes(self, data: bytes) -> tuple[str, bool]:
        digest, new = self.store.store_blob_bytes(data, pins=self.pins)
        if new:
            self.created.append(digest)
        return digest, new

    def store_file(self, path: Path, *, move: bool) -> tuple[str, bool]:
        digest, new = self.store.store_blob_file(path, move=move, pins=self.pins)
        if new:
            self.created.append(digest)
        return digest, new


# ---------------------------------------------------------------- base layers


def _from_source(job: _Job, source: str) -> tuple[list[_Built], dict[str, Any]]:
    """Layers (and the base config) for `from`: a model in the store or a local path."""
    store = job.store
    try:
        path = local_source_path(source)
    except LocalPathError as error:
        raise CreateError(str(error)) from None
    if path is not None:
        if path.is_dir():
            ggufs = gguf_files_in_folder(path)
            if ggufs:
                layers = [_local_gguf(job, file, source) for file in ggufs]
                layers.sort(key=lambda built: built.layer.media_type == MEDIA_TYPE_PROJECTOR)
                return layers, {}
            return [_convert(job, path)], {}
        if path.is_file():
            return [_local_gguf(job, path, source)], {}
        raise CreateError(f"{source}: no such file or folder")
    source_name = ModelName.parse(source)
    with store.lock():  # so no delete comes between reading and pinning
        manifest = store.read_manifest(source_name)
        if manifest is None:
            raise ModelNotFoundError(source)
        job.borrowed += [normalize_digest(digest) for digest in manifest.digests()]
        job.pins.add(job.borrowed)
    stored = store.stored_name(source_name) or source_name
    layers = []
    for layer in manifest.layers:
        if not store.has_blob(layer.digest):
            raise StoreError(f"blob {layer.digest} of {stored.display} is missing from the store")
        info = None
        if layer.media_type in _GGUF_LAYERS:
            info = _read_info(store.blob_path(layer.digest))
        inherited = Layer(
            layer.media_type, layer.digest, layer.size, from_=stored.display, name=layer.name
        )
        layers.append(_Built(inherited, _status(layer.digest, False), info))
    base_config: dict[str, Any] = {}
    if store.has_blob(manifest.config.digest):
        try:
            loaded = json.loads(store.blob_path(manifest.config.digest).read_bytes())
            base_config = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            base_config = {}
    return layers, base_config


_GGUF_LAYERS = (MEDIA_TYPE_MODEL, MEDIA_TYPE_PROJECTOR, MEDIA_TYPE_ADAPTER, MEDIA_TYPE_DRAFT)


def _draft_layer(job: _Job, request: CreateRequest) -> _Built:
    """The draft layer: from `draft_files`, a local path or a model of the store (whose model
    layer alone is taken)."""
    if request.draft_files:
        built = _from_files(job, request.draft_files, False)
    else:
        built, _base_config = _from_source(job, request.draft)
        if not names_a_path(request.draft):
            built = [b for b in built if b.layer.media_type == MEDIA_TYPE_MODEL]
    if len(built) != 1 or built[0].layer.media_type != MEDIA_TYPE_MODEL:
        raise CreateError("DRAFT must name one GGUF model (not a projector or an adapter)")
    layer = built[0].layer
    draft = Layer(MEDIA_TYPE_DRAFT, layer.digest, layer.size, from_=layer.from_, name=layer.name)
    return _Built(draft, built[0].status, built[0].info)


def _local_gguf(job: _Job, path: Path, source: str) -> _Built:
    """A layer for the GGUF file at `path`, copied into the store (unless it is a blob)."""
    store = job.store
    if not is_gguf_file(path):
        raise CreateError("supplied file was not in GGUF format")
    job.emit("parsing GGUF")
    digest = _own_blob_digest(store, path)
    new = False
    if digest is not None:
        job.pins.add([digest])
        if not store.has_blob(digest):
            raise CreateError(f"{source}: no such file or folder")
    else:
        digest, new = job.store_file(path, move=False)
    return _gguf_layer(store, digest, False, _status(digest, new))


def _with_projectors(base: list[_Built], added: list[_Built]) -> list[_Built]:
    """`base` with the projector layers of `added` (a second FROM beside a model name);
    they replace the base's projectors. Anything else in `added` is refused."""
    if any(built.layer.media_type != MEDIA_TYPE_PROJECTOR for built in added):
        raise CreateError(
            "a FROM file beside a model name must be a vision projector (mmproj) GGUF"
        )
    kept = [built for built in base if built.layer.media_type != MEDIA_TYPE_PROJECTOR]
    models = [i for i, built in enumerate(kept) if built.layer.media_type == MEDIA_TYPE_MODEL]
    at = models[-1] + 1 if models else len(kept)  # right after the model, as Ollama lays it out
    return kept[:at] + added + kept[at:]


def _own_blob_digest(store: Store, path: Path) -> str | None:
    """The digest of `path` when it is one of the store's own blobs (as the Modelfile that
    `show` prints names them), so it is not copied onto itself; None otherwise."""
    try:
        digest = normalize_digest(path.name)
    except InvalidDigestError:
        return None
    blob = store.blob_path(digest)
    try:
        return digest if blob.is_file() and blob.samefile(path) else None
    except OSError:
        return None


def _valid_file_name(name: str) -> bool:
    """Go's fs.ValidPath: slash-separated, relative, no '.', '..' or empty elements."""
    if name == "" or "\\" in name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _from_files(job: _Job, files: dict[str, str], is_adapter: bool) -> list[_Built]:
    """Layers for uploaded blobs named `{file name: digest}`."""
    store = job.store
    checked: dict[str, str] = {}
    for file_name, digest in files.items():
        if not _valid_file_name(file_name):
            raise CreateError("file path must be relative")
        try:
            digest = normalize_digest(digest)
        except InvalidDigestError:
            raise CreateError("invalid digest format") from None
        job.pins.add([digest])
        if not store.has_blob(digest):
            raise CreateError(f"blob {digest} not found: upload it with POST /api/blobs/{digest}")
        checked[file_name] = digest
    if any(file_name.endswith(".safetensors") for file_name in checked):
        if is_adapter:
            raise CreateError("converting safetensors adapters is not supported")
        folder = job.work / "safetensors"
        for file_name, digest in checked.items():
            link = folder / file_name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(store.blob_path(digest), link)
        return [_convert(job, folder, described_as="the uploaded files")]
    if is_adapter and len(checked) > 1:
        raise CreateError("only one adapter is currently supported")
    layers = []
    for file_name in sorted(checked):
        digest = checked[file_name]
        job.emit("parsing GGUF")
        if not is_gguf_file(store.blob_path(digest)):
            raise CreateError("supplied file was not in GGUF format")
        layers.append(_gguf_layer(store, digest, is_adapter, _status(digest, False)))
    # the model before its projector, whatever the file names (Ollama keeps name order)
    return sorted(layers, key=lambda built: built.layer.media_type == MEDIA_TYPE_PROJECTOR)


def _read_info(path: Path) -> GGUFInfo:
    try:
        return read_gguf_info_cached(path)
    except OSError as error:
        raise CreateError(f"cannot read GGUF file: {error.strerror}") from None
    except GGUFError as error:  # names the file, which is a blob: its name is its digest
        raise CreateError(f"cannot read GGUF file: {error}") from None


def _gguf_layer(store: Store, digest: str, is_adapter: bool, status: str) -> _Built:
    path = store.blob_path(digest)
    info = _read_info(path)
    if is_adapter or info.is_adapter:
        media_type = MEDIA_TYPE_ADAPTER
    elif info.is_projector:
        media_type = MEDIA_TYPE_PROJECTOR
    else:
        media_type = MEDIA_TYPE_MODEL
    return _Built(Layer(media_type, digest, path.stat().st_size), status, info)


def _convert(job: _Job, folder: Path, described_as: str | None = None) -> _Built:
    """Convert a safetensors folder to a GGUF model layer. Error messages call the folder
    `described_as` (when it is a temporary of the server's)."""
    from power.convert.converter import convert_folder  # heavy; only for this path

    job.emit("converting model")
    output = job.work / "converted.gguf"
    try:
        convert_folder(folder, output)
    except ValueError as error:
        message = str(error)
        if described_as is not None:
            message = message.replace(str(folder), described_as)
        raise CreateError(message) from None
    digest, new = job.store_file(output, move=True)
    return _gguf_layer(job.store, digest, False, _status(digest, new))


# ---------------------------------------------------------------- quantization

_backend_lock = threading.Lock()
_backend_ready = False


def _llama_quantize(source: Path, target: Path, file_type: int) -> None:
    """Run llama.cpp's quantizer (blocking, CPU-bound) from `source` to `target`."""
    global _backend_ready
    import llama_cpp  # the low-level ctypes API

    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    result = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if result != 0 or not target.is_file():
        raise CreateError(f"quantization failed (llama.cpp returned {result})")


def _quantized(job: _Job, built: _Built, quantize: str) -> _Built:
    """The model layer quantized to `quantize`, or unchanged when it already is of that type."""
    store = job.store
    try:
        wanted = file_type_from_name(quantize)
    except ValueError as error:
        raise CreateError(str(error)) from None
    info = built.info or _read_info(store.blob_path(built.layer.digest))
    current = info.quantization_level
    if current not in QUANTIZABLE_FROM:
        raise CreateError("quantization is only supported for F16, BF16 and F32 models")
    if info.file_type == wanted:
        return built
    job.emit(f"quantizing {current} model to {file_type_name(wanted)}")
    output = job.work / "quantized.gguf"
    _llama_quantize(store.blob_path(built.layer.digest), output, wanted)
    job.emit("verifying conversion")
    digest, new = job.store_file(output, move=True)
    return _gguf_layer(store, digest, False, _status(digest, new))


# ---------------------------------------------------------------- config and text layers


def _config(
    layers: list[_Built], base_config: dict[str, Any], request: CreateRequest
) -> dict[str, Any]:
    """The config blob's content, keys in the order of Ollama's ConfigV2 struct."""
    models = [b for b in layers if b.layer.media_type == MEDIA_TYPE_MODEL and b.info is not None]
    first = models[0].info if models else None
    config: dict[str, Any] = {
        "model_format": base_config.get("model_format") or ("gguf" if first else ""),
        "model_family": first.architecture if first else "",
        "model_families": [b.info.architecture for b in models] or None,
        "model_type": first.parameter_size if first else "",
        "file_type": first.quantization_level if first else "",
    }
    requires = request.requires
    if requires:
        try:
            requires = normalize_requires(requires)
        except ValueError as error:
            raise CreateError(str(error)) from None
    given = {"renderer": request.renderer, "parser": request.parser, "requires": requires}
    for key, value in given.items():
        if value:
            config[key] = value
        elif isinstance(base_config.get(key), str) and base_config[key]:
            config[key] = base_config[key]
    if isinstance(base_config.get("capabilities"), list) and base_config["capabilities"]:
        config["capabilities"] = list(base_config["capabilities"])
    drafts = [b for b in layers if b.layer.media_type == MEDIA_TYPE_DRAFT]
    if drafts:
        info = drafts[0].info
        draft = {"model_format": "gguf", "architecture": info.architecture if info else ""}
        config["draft"] = {key: value for key, value in draft.items() if value}
    config["architecture"] = "amd64"  # Ollama writes these two constants
    config["os"] = "linux"
    return config


def message_to_json(message: Message) -> dict[str, Any]:
    """An Ollama api.Message object: role and content, then the non-empty optional fields."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.thinking:
        out["thinking"] = message.thinking
    if message.images:
        out["images"] = [base64.b64encode(image).decode("ascii") for image in message.images]
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": call.function.name, "arguments": call.function.arguments}}
            for call in message.tool_calls
        ]
    if message.tool_name:
        out["tool_name"] = message.tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _typed_request_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for key, value in parameters.items():
        if value is None:
            continue
        try:
            typed[key] = coerce_option(key, value)
        except OptionError as error:
            raise CreateError(f"invalid parameter: {error}") from None
    return typed


def _with_text_layers(job: _Job, layers: list[_Built], request: CreateRequest) -> list[_Built]:
    """Add (or replace) the template, system, license, params and messages layers."""
    store = job.store

    def text_layer(data: bytes, media_type: str) -> _Built:
        digest, new = job.store_bytes(data)
        return _Built(Layer(media_type, digest, len(data)), _status(digest, new))

    def without(*media_types: str) -> list[_Built]:
        return [b for b in layers if b.layer.media_type not in media_types]

    if request.template:
        layers = without(MEDIA_TYPE_TEMPLATE, MEDIA_TYPE_PROMPT)
        layers.append(text_layer(request.template.encode("utf-8"), MEDIA_TYPE_TEMPLATE))
    if request.system:
        layers = without(MEDIA_TYPE_SYSTEM)
        layers.append(text_layer(request.system.encode("utf-8"), MEDIA_TYPE_SYSTEM))
    licenses = [request.license] if isinstance(request.license, str) else request.license or []
    present = {b.layer.digest for b in layers if b.layer.media_type == MEDIA_TYPE_LICENSE}
    for text in licenses:
        if not text:
            continue
        built = text_layer(text.encode("utf-8"), MEDIA_TYPE_LICENSE)
        if built.layer.digest not in present:  # the same license twice adds nothing
            present.add(built.layer.digest)
            layers.append(built)
    params = _typed_request_parameters(request.parameters)
    for built in layers:
        if built.layer.media_type != MEDIA_TYPE_PARAMS:
            continue
        try:
            inherited = json.loads(store.blob_path(built.layer.digest).read_bytes())
        except (OSError, ValueError):
            inherited = {}
        for key, value in (inherited if isinstance(inherited, dict) else {}).items():
            params.setdefault(key, value)
    if params:
        layers = without(MEDIA_TYPE_PARAMS)
        layers.append(text_layer(go_json_encode(params, sort_keys=True), MEDIA_TYPE_PARAMS))
    if request.messages:
        layers = without(MEDIA_TYPE_MESSAGES)
        data = go_json_encode([message_to_json(m) for m in request.messages])
        layers.append(text_layer(data, MEDIA_TYPE_MESSAGES))
    return layers
