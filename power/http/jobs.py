"""Generation jobs shared by the native and OpenAI routes.

`generate_job` / `chat_job` validate and resolve everything that can fail with a 4xx before
anything runs, then return either an immediate answer (a dict: model loaded or unloaded, or the
rendered prompt for `_debug_render_only`) or an async iterator of native chunks whose first
step acquires the model (loading it if needed) and whose exit releases it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from power.engine.types import EngineError, GenerationParams
from power.http.inference import (
    ModelRef,
    OutputShaper,
    effective_options,
    grammar_for,
    render_messages_prompt,
    resolve_model,
    special_tokens,
    stream_generation,
    think_enabled,
    use_model,
)
from power.http.schemas import ChatRequest, GenerateRequest, RequestError
from power.http.streaming import rfc3339_now

Outcome = dict[str, Any] | AsyncIterator[dict[str, Any]]


async def _load_or_unload(
    state, ref: ModelRef, options, keep_alive, *, kind: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ref.name, "created_at": rfc3339_now()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out["done"] = True
    if keep_alive is not None and keep_alive <= 0:
        await state.manager.unload(ref.name)
        out["done_reason"] = "unload"
        return out
    async with use_model(state, ref, options, keep_alive):
        pass
    out["done_reason"] = "load"
    return out


def _check_runnable(ref: ModelRef, images: list[bytes]) -> None:
    if "completion" not in ref.capabilities:
        raise RequestError(400, f'"{ref.name}" does not support generate')
    if images:
        if "vision" not in ref.capabilities:
            raise RequestError(
                400, f'"{ref.name}" does not support images (the model has no vision support)'
            )
        raise RequestError(501, "image input is not supported by this power build yet")


async def generate_job(
    state, req: GenerateRequest, *, t_start: int, debug: bool = False
) -> Outcome:
    """A load/unload/debug answer (dict), or the native chunks of a generation."""
    ref = resolve_model(state, req.model)
    options = effective_options(state, ref, req.options)
    if not req.prompt and not req.images and not req.suffix and not debug:
        return await _load_or_unload(state, ref, options, req.keep_alive, kind="generate")
    _check_runnable(ref, req.images)
    think = think_enabled(ref, req.think)
    resolved = ref.resolved
    template = req.template or resolved.template
    fim = False
    if req.raw:
        prompt_text = req.prompt
    else:
        from power.registry.prompt import render_generate, template_uses

        if req.suffix and "insert" not in ref.capabilities:
            raise RequestError(400, f'"{ref.name}" does not support insert')
        # fill-in-the-middle with the vocabulary's FIM tokens when the template has no .Suffix
        fim = bool(req.suffix) and not (template and template_uses(template, "Suffix"))
        prompt_text = req.prompt
    if not req.raw and not fim:
        try:
            prompt_text = render_generate(
                req.prompt,
                template=req.template or resolved.template,
                jinja_template=None
                if (req.template or resolved.template)
                else ref.info.chat_template,
                system=req.system or resolved.system or None,
                suffix=req.suffix or None,
                think=req.think,
                special_tokens=special_tokens(ref.info),
                messages=list(resolved.messages) or None,
            )
        except Exception as exc:  # noqa: BLE001
            raise RequestError(400, f"template error: {exc}") from None
    if debug:
        if fim:
            async with use_model(state, ref, options, req.keep_alive) as model:
                prompt_text = model.detokenize(model.fim_tokens(req.prompt, req.suffix))
        return {
            "model": ref.name,
            "created_at": rfc3339_now(),
            "response": "",
            "done": True,
            "debug": {"rendered_template": prompt_text},
        }
    grammar = grammar_for(req.format)
    truncate = True if req.truncate is None else req.truncate
    shift = True if req.shift is None else req.shift

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async with use_model(state, ref, options, req.keep_alive) as model:
            if fim:
                try:
                    tokens = model.fim_tokens(req.prompt, req.suffix)
                except EngineError as exc:
                    raise RequestError(exc.status, str(exc)) from None
            else:
                n_vocab = model.model.n_vocab
                if any(not 0 <= t < n_vocab for t in req.context):
                    raise RequestError(400, f"context holds token ids outside 0..{n_vocab - 1}")
                tokens = list(req.context) + model.tokenize(
                    prompt_text, add_special=not req.context
                )
            params = GenerationParams(
                prompt=tuple(tokens),
                options=options,
                grammar=grammar,
                logprobs=req.logprobs,
                top_logprobs=req.top_logprobs,
                truncate=truncate,
                shift=shift,
            )
            shaper = (
                OutputShaper(think=think, tools=[], template_hint=None, prompt=prompt_text)
                if think
                else None
            )
            try:
                async for chunk in stream_generation(
                    state,
                    ref,
                    model,
                    params,
                    kind="generate",
                    shaper=shaper,
                    t_start_ns=t_start,
                    load_ns=model.load_ns_since(t_start),
                    extra_final={"context": not req.raw},
                ):
                    yield chunk
            except EngineError as exc:
                raise RequestError(exc.status, str(exc)) from None

    return chunks()


async def chat_job(state, req: ChatRequest, *, t_start: int, debug: bool = False) -> Outcome:
    """A load/unload/debug answer (dict), or the native chunks of a chat turn."""
    ref = resolve_model(state, req.model)
    options = effective_options(state, ref, req.options)
    if not req.messages and not debug:
        return await _load_or_unload(state, ref, options, req.keep_alive, kind="chat")
    _check_runnable(ref, [img for m in req.messages for img in m.images])
    if req.tools:
        ref.require("tools")
    think = think_enabled(ref, req.think)
    prompt_text = render_messages_prompt(ref, req.messages, tools=req.tools, think=req.think)
    if debug:
        return {
            "model": ref.name,
            "created_at": rfc3339_now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "debug": {"rendered_template": prompt_text},
        }
    grammar = grammar_for(req.format)
    truncate = True if req.truncate is None else req.truncate
    shift = True if req.shift is None else req.shift
    hint = ref.resolved.template or ref.info.chat_template

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async with use_model(state, ref, options, req.keep_alive) as model:
            params = GenerationParams(
                prompt=tuple(model.tokenize(prompt_text)),
                options=options,
                grammar=grammar,
                logprobs=req.logprobs,
                top_logprobs=req.top_logprobs,
                truncate=truncate,
                shift=shift,
            )
            shaper = OutputShaper(
                think=think, tools=req.tools, template_hint=hint, prompt=prompt_text
            )
            try:
                async for chunk in stream_generation(
                    state,
                    ref,
                    model,
                    params,
                    kind="chat",
                    shaper=shaper,
                    t_start_ns=t_start,
                    load_ns=model.load_ns_since(t_start),
                ):
                    yield chunk
            except EngineError as exc:
                raise RequestError(exc.status, str(exc)) from None

    return chunks()


async def embed_texts(
    state, ref: ModelRef, inputs: list[str], *, options, keep_alive, truncate, dimensions
):
    async with use_model(state, ref, options, keep_alive) as model:
        try:
            return await model.embed(inputs, truncate=truncate, dimensions=dimensions), model
        except EngineError as exc:
            raise RequestError(exc.status, str(exc)) from None
