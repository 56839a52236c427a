"""A stored model made ready to run, and everything the HTTP layer hands to the engine.

This is the one place that builds the engine's inputs from a request: `resolve_model` (store →
`ModelRef`, 404 if missing; the store is read in a worker thread, and only when the manifest
changed since the last request: `state.resolved`), `effective_options` (power defaults < Modelfile PARAMETERs <
request options), `load_spec` and `instance_info` (what `ModelManager.use` gets), `use_model`
(hold the loaded model for a block), `generation_params` (one generation's `GenerationParams`).
A change of the engine's input types is a change of this module only.

Every failure here is a `RequestError` with the status the client should see.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from power.engine.grammar import JSON_GBNF, json_schema_to_gbnf
from power.engine.model import LoadedModel, LoadSpec
from power.engine.types import EngineError, GenerationParams
from power.http import request_log
from power.http.model_json import details_json
from power.http.schemas import ChatRequest, GenerateRequest, RequestError
from power.http.state import ServerState
from power.messages import Tool, ToolChoice
from power.options import OptionError, Options
from power.prompt.toolgrammar import tool_call_grammar
from power.registry.gguf_meta import GGUFInfo, read_gguf_info_cached
from power.registry.models import ResolvedModel
from power.registry.names import InvalidNameError, ModelName
from power.registry.store import ModelNotFoundError, StoreError
from power.version import unmet_requirement

log = logging.getLogger(__name__)


@attrs.define
class ModelRef:
    """A model of the store, resolved for running."""

    name: str  # as the client named it (shortest form)
    resolved: ResolvedModel
    info: GGUFInfo

    @property
    def capabilities(self) -> list[str]:
        return list(self.resolved.capabilities)

    def require_embedding(self) -> None:
        if "embedding" not in self.capabilities:
            raise RequestError(400, f'"{self.name}" does not support embeddings')

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise RequestError(400, f'"{self.name}" does not support {capability}')


async def resolve_model(state: ServerState, name: str) -> ModelRef:
    """The stored model `name`, ready to run: 400 for a bad name or a model without a model
    layer, 404 when it is not in the store, 412 when it requires a newer Ollama than power
    follows (`REQUIRES`), 500 when the store cannot be read. The store is
    read in a worker thread (the trio thread never waits on the disk), and only when the
    model's manifest changed since it was last read."""
    if not name:
        raise RequestError(400, "model is required")
    try:
        parsed = ModelName.parse(name)
    except InvalidNameError as exc:
        raise RequestError(400, str(exc)) from None
    request_log.note(model=parsed.display)

    def read() -> tuple[ResolvedModel, GGUFInfo]:
        resolved = state.resolved.lookup(parsed)
        if resolved.model_path is None:
            raise RequestError(400, f"model '{parsed.display}' has no model layer")
        try:
            return resolved, resolved.info or read_gguf_info_cached(resolved.model_path)
        except (OSError, ValueError) as exc:
            log.error("cannot read the model file of %s: %s", parsed.display, exc)
            raise RequestError(
                500,
                f"model '{parsed.display}' cannot be read: its model file is missing or damaged",
            ) from None

    try:
        resolved, info = await trio.to_thread.run_sync(read)
    except ModelNotFoundError:
        raise RequestError(404, f"model '{name}' not found") from None
    except StoreError as exc:
        raise RequestError(500, str(exc)) from None
    unmet = unmet_requirement(resolved.requires)
    if unmet is not None:  # Ollama's registry answers 412 for a model too new for the client
        raise RequestError(412, unmet)
    return ModelRef(name=parsed.display, resolved=resolved, info=info)


def effective_options(
    state: ServerState, ref: ModelRef, request_options: dict[str, Any]
) -> Options:
    """power's defaults, then the model's PARAMETERs, then the request's options."""
    base = Options(num_ctx=state.settings.context_length, num_thread=state.settings.num_thread)
    try:
        return base.updated(dict(ref.resolved.params)).updated(request_options)
    except OptionError as exc:
        raise RequestError(400, str(exc)) from None


def think_enabled(ref: ModelRef, think: bool | str | None) -> bool:
    if think is None or think is False:
        return False
    if "thinking" not in ref.capabilities:
        raise RequestError(400, f'"{ref.name}" does not support thinking')
    return True


# ---------------------------------------------------------------- the engine's inputs


def load_spec(state: ServerState, ref: ModelRef, options: Options) -> LoadSpec:
    spec = LoadSpec.from_options(
        ref.resolved.model_path,
        options,
        adapters=tuple(str(p) for p in ref.resolved.adapter_paths),
        projector_path=ref.resolved.projector_path,
        num_parallel=state.settings.num_parallel,
        kv_cache_type=state.settings.kv_cache_type,
        flash_attention=state.settings.flash_attention,
    )
    return attrs.evolve(
        spec,
        rpc_servers=state.settings.rpc_servers,
        tensor_split=state.settings.tensor_split,
        speculative=state.settings.speculative,
        draft_path=(
            str(ref.resolved.draft_path)
            if ref.resolved.draft_path is not None and state.settings.speculative
            else None
        ),
    )


def instance_info(ref: ModelRef) -> dict[str, Any]:
    """What the manager keeps beside a loaded model for /api/ps."""
    return {
        "digest": ref.resolved.digest,
        "details": details_json(ref.resolved.details),
        "model": ref.name,
        "size": ref.resolved.size,
    }


@contextlib.asynccontextmanager
async def use_model(
    state: ServerState, ref: ModelRef, options: Options, keep_alive: float | None
) -> AsyncIterator[LoadedModel]:
    """Hold `ref` loaded (loading it if needed) for the block; engine errors become 4xx/5xx,
    and an option the load refuses (`OptionError`) a 400 naming it."""
    try:
        spec = load_spec(state, ref, options)
        async with state.manager.use(
            ref.name, spec, keep_alive=keep_alive, info=instance_info(ref)
        ) as model:
            yield model
    except EngineError as exc:
        raise RequestError(exc.status, str(exc)) from None
    except OptionError as exc:
        raise RequestError(400, str(exc)) from None


def grammar_for(format_: str | dict | None) -> str | None:
    """The GBNF grammar that enforces a request's `format` ("json" or a JSON schema)."""
    if format_ is None or format_ == "":
        return None
    if format_ == "json":
        return JSON_GBNF
    if isinstance(format_, dict):
        try:
            return json_schema_to_gbnf(format_)
        except Exception as exc:  # noqa: BLE001
            raise RequestError(400, f"invalid JSON schema in format: {exc}") from None
    raise RequestError(400, f"invalid format: {format_!r}")


def tool_choice_grammar(
    tools: list[Tool], choice: ToolChoice, template_hint: str | None, thinking: str | None
) -> str | None:
    """The GBNF grammar that enforces a `tool_choice` that forces a call (None otherwise), in
    the tool-call format of the model's template; `thinking` as `tool_call_grammar` takes it."""
    try:
        return tool_call_grammar(
            tools, choice, template_hint, json_schema_to_gbnf, thinking=thinking
        )
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


def generation_params(
    tokens: list[int],
    options: Options,
    grammar: str | None,
    request: GenerateRequest | ChatRequest,
    *,
    images: tuple = (),
) -> GenerationParams:
    """One generation's parameters: the request's logprobs, truncate and shift (the last two
    default to on); `grammar` comes from `grammar_for`, called before anything loads so that a
    bad schema is a plain 400; `images` from `LoadedModel.tokenize_with_images`."""
    return GenerationParams(
        prompt=tuple(tokens),
        images=images,
        options=options,
        grammar=grammar,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
        truncate=True if request.truncate is None else request.truncate,
        shift=True if request.shift is None else request.shift,
    )
