"""What the generate/chat/embed routes share: model resolution, options, prompt rendering, and
the native response stream (dicts in Ollama's shape) that both the native and OpenAI routes
serialise.

A generation's path: `resolve_model` (store → `ModelRef`, 404 if missing) → `effective_options`
(power defaults < Modelfile PARAMETERs < request options) → prompt rendering (Go template, or the
GGUF's Jinja template, or the raw prompt) → tokenize → `manager.use(...)` → `model.generate` →
each engine chunk through the thinking and tool-call parsers → native dicts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs

from power.engine.model import LoadedModel, LoadSpec
from power.engine.types import Chunk, EngineError, GenerationParams, TokenLogprob
from power.http.app import ServerState
from power.http.schemas import RequestError
from power.http.streaming import rfc3339_now
from power.messages import Message, Tool
from power.options import OptionError, Options
from power.registry.gguf_meta import GGUFInfo, read_gguf_info_cached
from power.registry.models import ModelNotFoundError, ResolvedModel, resolve
from power.registry.names import InvalidNameError, ModelName

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


def resolve_model(state: ServerState, name: str) -> ModelRef:
    if not name:
        raise RequestError(400, "model is required")
    try:
        parsed = ModelName.parse(name)
    except InvalidNameError as exc:
        raise RequestError(400, str(exc)) from None
    try:
        resolved = resolve(state.store, name)
    except ModelNotFoundError:
        raise RequestError(404, f"model '{name}' not found") from None
    if resolved.model_path is None:
        raise RequestError(400, f"model '{parsed.display}' has no model layer")
    info = resolved.info or read_gguf_info_cached(resolved.model_path)
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


def load_spec(state: ServerState, ref: ModelRef, options: Options) -> LoadSpec:
    spec = LoadSpec.from_options(
        ref.resolved.model_path,
        options,
        adapters=tuple(str(p) for p in ref.resolved.adapter_paths),
        num_parallel=state.settings.num_parallel,
        kv_cache_type=state.settings.kv_cache_type,
        flash_attention=state.settings.flash_attention,
    )
    return attrs.evolve(
        spec, rpc_servers=state.settings.rpc_servers, tensor_split=state.settings.tensor_split
    )


@contextlib.asynccontextmanager
async def use_model(
    state: ServerState, ref: ModelRef, options: Options, keep_alive: float | None
) -> AsyncIterator[LoadedModel]:
    spec = load_spec(state, ref, options)
    info = {
        "digest": ref.resolved.digest,
        "details": ref.resolved.details.to_dict(),
        "model": ref.name,
        "size": ref.resolved.size,
    }
    try:
        async with state.manager.use(ref.name, spec, keep_alive=keep_alive, info=info) as model:
            yield model
    except EngineError as exc:
        raise RequestError(exc.status, str(exc)) from None


def grammar_for(format_: str | dict | None) -> str | None:
    if format_ is None or format_ == "":
        return None
    from power.engine.grammar import JSON_GBNF, json_schema_to_gbnf

    if format_ == "json":
        return JSON_GBNF
    if isinstance(format_, dict):
        try:
            return json_schema_to_gbnf(format_)
        except Exception as exc:  # noqa: BLE001
            raise RequestError(400, f"invalid JSON schema in format: {exc}") from None
    raise RequestError(400, f"invalid format: {format_!r}")


def special_tokens(info: GGUFInfo) -> dict[str, str]:
    out = {}
    for key, name in (
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
    ):
        value = info.get(name)
        if isinstance(value, str):
            out[key] = value
    return out


def think_enabled(ref: ModelRef, think: bool | str | None) -> bool:
    if think is None or think is False:
        return False
    if "thinking" not in ref.capabilities:
        raise RequestError(400, f'"{ref.name}" does not support thinking')
    return True


# ---------------------------------------------------------------- output shaping


def logprobs_json(items: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.bytes),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
                for t in lp.top_logprobs
            ],
        }
        for lp in items
    ]


def final_metrics(chunk: Chunk, t_start_ns: int, load_ns: int) -> dict[str, Any]:
    return {
        "done_reason": chunk.done_reason.value if chunk.done_reason else "stop",
        "total_duration": time.perf_counter_ns() - t_start_ns,
        "load_duration": load_ns,
        "prompt_eval_count": chunk.prompt_eval_count,
        "prompt_eval_duration": chunk.prompt_eval_duration,
        "eval_count": chunk.eval_count,
        "eval_duration": chunk.eval_duration,
    }


class OutputShaper:
    """Turns engine text into (thinking, content, tool calls) with the streaming parsers."""

    def __init__(
        self, *, think: bool, tools: list[Tool], template_hint: str | None, prompt: str
    ) -> None:
        from power.http.thinking import ThinkingParser
        from power.http.toolcalls import ToolCallParser

        self.thinking = None
        if think:
            starts = prompt.rstrip().endswith("<think>")
            self.thinking = ThinkingParser(starts_in_thinking=starts)
        self.tools = (
            ToolCallParser([t.function.name for t in tools], template_hint) if tools else None
        )

    def feed(self, text: str, final: bool = False) -> tuple[str, str, list]:
        thinking, content = "", text
        if self.thinking is not None:
            thinking, content = self.thinking.feed(text)
            if final:
                more_thinking, more_content = self.thinking.finish()
                thinking += more_thinking
                content += more_content
        calls: list = []
        if self.tools is not None:
            content, calls = self.tools.feed(content)
            if final:
                more, more_calls = self.tools.finish()
                content += more
                calls += more_calls
        return thinking, content, calls


async def stream_generation(
    state: ServerState,
    ref: ModelRef,
    model: LoadedModel,
    params: GenerationParams,
    *,
    kind: str,
    shaper: OutputShaper | None,
    t_start_ns: int,
    load_ns: int,
    extra_final: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Native response dicts for one generation (`kind` is "generate" or "chat")."""
    from power.http.schemas import tool_call_to_json

    first = True
    async with contextlib.aclosing(model.generate(params)) as stream:
        async for chunk in stream:
            if first and (chunk.text or chunk.done):
                state.metrics.ttft.labels(model=ref.name).observe(
                    (time.perf_counter_ns() - t_start_ns) / 1e9
                )
                first = False
            thinking, content, calls = ("", chunk.text, [])
            if shaper is not None:
                thinking, content, calls = shaper.feed(chunk.text, final=chunk.done)
            out: dict[str, Any] = {"model": ref.name, "created_at": rfc3339_now()}
            if kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if thinking:
                    message["thinking"] = thinking
                if calls:
                    message["tool_calls"] = [tool_call_to_json(c) for c in calls]
                out["message"] = message
            else:
                out["response"] = content
                if thinking:
                    out["thinking"] = thinking
            if chunk.logprobs:
                out["logprobs"] = logprobs_json(chunk.logprobs)
            if not chunk.done:
                if not (content or thinking or calls or chunk.logprobs):
                    continue
                out["done"] = False
                yield out
                continue
            out["done"] = True
            out.update(final_metrics(chunk, t_start_ns, load_ns))
            if chunk.truncated:
                # unlike Ollama, say so: the prompt did not fit num_ctx and lost its middle
                out["prompt_truncated"] = True
            if kind == "generate" and extra_final and extra_final.get("context", True):
                out["context"] = list(chunk.context)
            state.metrics.record_generation(ref.name, chunk.prompt_eval_count, chunk.eval_count)
            yield out


def merge_stream(chunks: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """One response object from a whole stream (for `stream: false`)."""
    if not chunks:
        raise EngineError("no output")
    final = dict(chunks[-1])
    if kind == "chat":
        content = "".join(c["message"].get("content", "") for c in chunks)
        thinking = "".join(c["message"].get("thinking", "") for c in chunks)
        calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        final["message"] = message
    else:
        final["response"] = "".join(c.get("response", "") for c in chunks)
        thinking = "".join(c.get("thinking", "") for c in chunks)
        if thinking:
            final["thinking"] = thinking
    logprobs = [lp for c in chunks for lp in c.get("logprobs", [])]
    if logprobs:
        final["logprobs"] = logprobs
    return final


def render_messages_prompt(
    ref: ModelRef, messages: list[Message], *, tools: list[Tool], think: bool | str | None
) -> str:
    from power.registry.prompt import render_chat

    resolved = ref.resolved
    all_messages = list(resolved.messages) + list(messages)
    try:
        return render_chat(
            all_messages,
            template=resolved.template,
            jinja_template=ref.info.chat_template if not resolved.template else None,
            system=resolved.system or None,
            tools=tools or None,
            think=think,
            special_tokens=special_tokens(ref.info),
        )
    except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
        raise RequestError(400, f"template error: {exc}") from None
