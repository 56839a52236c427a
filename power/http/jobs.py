"""The generation jobs every API style shares: generate, chat, embed.

`generate_job` / `chat_job` validate and resolve everything that can fail with a 4xx before
anything runs, then return either an immediate answer (a dict: model loaded or unloaded, or the
rendered prompt for `_debug_render_only`) or an async iterator of native chunks whose first
step acquires the model (loading it if needed) and whose exit releases it.

Native chunks are Ollama's response objects (`model`, `created_at`, `response` or `message`,
`thinking`, `logprobs`, `done`, and the metrics on the last one): /api/generate and /api/chat
write them as they are, and every other API style (`openai_compat`) translates them, as
Ollama's own compatibility layer does. `merge_stream` turns a whole stream into one object.

A generation's path: `running.resolve_model` → `running.effective_options` → the prompt
(`power.prompt.model`) → tokenize → `running.use_model` → `model.generate` → each engine chunk
through `power.prompt.output.OutputShaper` (thinking, tool calls) → native chunks.

Images (`images` of /api/generate and of chat messages, already decoded from base64 at the edge):
the prompt is rendered with Ollama's `[img-N]` tags (`power.prompt.images`), cut at the tags
into text and image parts, and tokenised by the model's projector
(`LoadedModel.tokenize_with_images`, in a worker thread); a tag without an image, or an image
the projector cannot decode, is a 400 before anything is generated. In `raw` mode a prompt
without tags gets the images in front of it.

The trio thread never waits on a long computation of one request: resolving reads the store in a
worker thread (and only when the manifest changed), and rendering the template and tokenizing
run in worker threads too (`_in_thread`). Tokenizing reads only the model's vocabulary, which
llama.cpp never changes after loading: `llama_tokenize` works on a `const llama_vocab *` and
keeps no state between calls, so it is safe beside a `llama_decode` running on a context of the
same model (llama.cpp's own server tokenizes in its HTTP threads while its loop decodes). The
model is held (`use_model`) while its vocabulary is in use, and the thread is never abandoned
on cancellation, so the vocabulary outlives every call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio

from power.engine.model import LoadedModel
from power.engine.types import Chunk, EngineError, GenerationParams, TokenLogprob
from power.http.chat_fit import drop_old_messages
from power.http.running import (
    ModelRef,
    effective_options,
    generation_params,
    grammar_for,
    resolve_model,
    think_enabled,
    tool_choice_grammar,
    use_model,
)
from power.http.schemas import ChatRequest, GenerateRequest, RequestError, tool_call_to_json
from power.http.state import ServerState
from power.http.streaming import rfc3339_now
from power.messages import Message, Tool, ToolChoiceMode
from power.prompt.images import has_tags, split_at_tags
from power.prompt.model import chat_images, chat_prompt, generate_prompt, tool_call_hint
from power.prompt.output import OutputShaper
from power.prompt.render import template_uses

log = logging.getLogger(__name__)

Outcome = dict[str, Any] | AsyncIterator[dict[str, Any]]


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a worker thread; a cancellation waits for it to return (the
    thread may be using the model's vocabulary, which must outlive it)."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def _render(render: Callable[..., str], *args: Any, **kwargs: Any) -> str:
    """A prompt rendered in a worker thread; a template error is the request's problem (400)."""
    try:
        return await _in_thread(render, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise RequestError(400, f"template error: {exc}") from None


async def _load_or_unload(
    state: ServerState, ref: ModelRef, options, keep_alive, *, kind: str
) -> dict[str, Any]:
    out = _empty_answer(ref, kind)
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
        if ref.resolved.projector_path is None:
            raise RequestError(
                501,
                f'"{ref.name}" has its vision encoder inside its model file (Ollama\'s own '
                "format), which power cannot run: import the model with a separate projector "
                "(mmproj) GGUF to use images",
            )


def _image_parts(prompt_text: str, images: list[bytes]) -> list[str | bytes] | None:
    """The rendered prompt cut at its `[img-N]` tags (None without images); 400 for a tag
    without an image."""
    if not images:
        return None
    try:
        return split_at_tags(prompt_text, images)
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


def _empty_answer(ref: ModelRef, kind: str) -> dict[str, Any]:
    """A final native chunk with no output (load, unload, `_debug_render_only`)."""
    return {**_native_chunk(ref, kind, "", "", []), "done": True}


def _debug_answer(ref: ModelRef, kind: str, prompt_text: str, n_images: int) -> dict[str, Any]:
    """`_debug_render_only`'s answer: Ollama's `_debug_info` (api/types.go DebugInfo), with
    `image_count` left out when there are no images."""
    info: dict[str, Any] = {"rendered_template": prompt_text}
    if n_images:
        info["image_count"] = n_images
    return {**_empty_answer(ref, kind), "_debug_info": info}


async def generate_job(
    state: ServerState, req: GenerateRequest, *, t_start: int, debug: bool = False
) -> Outcome:
    """A load/unload/debug answer (dict), or the native chunks of a generation."""
    ref = await resolve_model(state, req.model)
    options = effective_options(state, ref, req.options)
    if not req.prompt and not req.images and not req.suffix and not debug:
        return await _load_or_unload(state, ref, options, req.keep_alive, kind="generate")
    images = list(req.images)
    _check_runnable(ref, images)
    if images and req.suffix:
        raise RequestError(400, "images cannot be combined with suffix (fill-in-the-middle)")
    think = think_enabled(ref, req.think)
    template = req.template or ref.resolved.template
    fim = False
    prompt_text = req.prompt
    if not req.raw:
        if req.suffix and "insert" not in ref.capabilities:
            raise RequestError(400, f'"{ref.name}" does not support insert')
        # fill-in-the-middle with the vocabulary's FIM tokens when the template has no .Suffix
        fim = bool(req.suffix) and not (template and template_uses(template, "Suffix"))
        if not fim:
            prompt_text = await _render(
                generate_prompt,
                ref.resolved,
                ref.info,
                req.prompt,
                template=req.template,
                system=req.system,
                suffix=req.suffix,
                think=req.think,
                n_images=len(images),
            )
    elif images and not has_tags(prompt_text):
        prompt_text = "".join(f"[img-{i}]" for i in range(len(images))) + prompt_text
    if debug:
        if fim:
            async with use_model(state, ref, options, req.keep_alive) as model:
                tokens = await _in_thread(model.fim_tokens, req.prompt, req.suffix)
                prompt_text = await _in_thread(model.detokenize, tokens)
        return _debug_answer(ref, "generate", prompt_text, len(images))
    grammar = grammar_for(req.format)
    parts = _image_parts(prompt_text, images)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async with use_model(state, ref, options, req.keep_alive) as model:
            try:
                prompt_images = ()
                if fim:
                    tokens = await _in_thread(model.fim_tokens, req.prompt, req.suffix)
                else:
                    n_vocab = model.model.n_vocab
                    if any(not 0 <= t < n_vocab for t in req.context):
                        raise RequestError(400, f"context holds token ids outside 0..{n_vocab - 1}")
                    if parts is not None:
                        tokens, prompt_images = await model.tokenize_with_images(
                            parts, add_special=not req.context
                        )
                    else:
                        tokens = await _in_thread(
                            model.tokenize, prompt_text, add_special=not req.context
                        )
                    tokens = list(req.context) + tokens
                params = generation_params(tokens, options, grammar, req, images=prompt_images)
                shaper = (
                    OutputShaper(think=True, tools=[], template_hint=None, prompt=prompt_text)
                    if think
                    else None
                )
                async for chunk in stream_generation(
                    state,
                    ref,
                    model,
                    params,
                    kind="generate",
                    shaper=shaper,
                    t_start_ns=t_start,
                    load_ns=model.load_ns_since(t_start),
                    with_context=not req.raw,
                ):
                    yield chunk
            except EngineError as exc:
                raise RequestError(exc.status, str(exc)) from None

    return chunks()


async def chat_job(
    state: ServerState, req: ChatRequest, *, t_start: int, debug: bool = False
) -> Outcome:
    """A load/unload/debug answer (dict), or the native chunks of a chat turn.

    `tool_choice` is kept here for every API style: "none" shows the model no tools, a choice
    that forces a call constrains the output with a grammar in the model's tool-call format.
    """
    ref = await resolve_model(state, req.model)
    options = effective_options(state, ref, req.options)
    if not req.messages and not debug:
        return await _load_or_unload(state, ref, options, req.keep_alive, kind="chat")
    images = chat_images(ref.resolved, req.messages)
    _check_runnable(ref, images)
    tools = _offered_tools(ref, req)
    think = think_enabled(ref, req.think)
    prompt_text = await _chat_prompt_text(ref, req, tools)
    if debug:
        return _debug_answer(ref, "chat", prompt_text, len(images))
    hint = tool_call_hint(ref.resolved, ref.info)
    grammar = _chat_grammar(req, tools, hint, think=think, prompt_text=prompt_text)
    parts = _image_parts(prompt_text, images)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async with use_model(state, ref, options, req.keep_alive) as model:
            try:
                text = prompt_text
                tokens, prompt_images = await _tokenize(model, text, parts)
                n_dropped = 0
                n_messages = len(ref.resolved.messages) + len(req.messages)
                if req.truncate is not False and len(tokens) >= model.n_ctx_seq and n_messages > 1:
                    text, tokens, prompt_images, n_dropped = await _fit_chat(ref, req, tools, model)
                params = generation_params(tokens, options, grammar, req, images=prompt_images)
                shaper = OutputShaper(think=think, tools=tools, template_hint=hint, prompt=text)
                async for chunk in stream_generation(
                    state,
                    ref,
                    model,
                    params,
                    kind="chat",
                    shaper=shaper,
                    t_start_ns=t_start,
                    load_ns=model.load_ns_since(t_start),
                    truncated=n_dropped > 0,
                ):
                    yield chunk
            except EngineError as exc:
                raise RequestError(exc.status, str(exc)) from None

    return chunks()


async def _tokenize(
    model: LoadedModel, text: str, parts: list[str | bytes] | None
) -> tuple[list[int], tuple]:
    """The prompt's tokens and images (`parts` from `_image_parts`; None without images)."""
    if parts is not None:
        return await model.tokenize_with_images(parts)
    return await _in_thread(model.tokenize, text), ()


async def _fit_chat(
    ref: ModelRef, req: ChatRequest, tools: list[Tool], model: LoadedModel
) -> tuple[str, list[int], tuple, int]:
    """A conversation too long for the context, with old messages dropped as Ollama does
    (`chat_fit`): the prompt text, its tokens and images, and how many messages went."""
    without_messages = attrs.evolve(ref.resolved, messages=[])
    conversation = list(ref.resolved.messages) + list(req.messages)

    async def attempt(kept: list[Message]) -> tuple[str, list[int], tuple]:
        text = await _render(
            chat_prompt, without_messages, ref.info, kept, tools=tools, think=req.think
        )
        parts = _image_parts(text, chat_images(without_messages, kept))
        return (text, *await _tokenize(model, text, parts))

    (text, tokens, images), start = await drop_old_messages(
        conversation, attempt, lambda result: len(result[1]) < model.n_ctx_seq
    )
    n_dropped = start - sum(1 for m in conversation[:start] if m.role == "system")
    log.info("chat for %s: dropped %d old messages to fit num_ctx", ref.name, n_dropped)
    return text, tokens, images, n_dropped


async def count_chat_tokens(state: ServerState, req: ChatRequest) -> int:
    """How many tokens the prompt of `req` takes: rendered as `chat_job` renders it and
    tokenized by the model itself (loaded if needed, with the request's keep_alive), each
    image counted as the tokens the projector gives it (as in `prompt_eval_count`)."""
    ref = await resolve_model(state, req.model)
    options = effective_options(state, ref, req.options)
    images = chat_images(ref.resolved, req.messages)
    if images:
        _check_runnable(ref, images)
    prompt_text = await _chat_prompt_text(ref, req, _offered_tools(ref, req))
    parts = _image_parts(prompt_text, images)
    async with use_model(state, ref, options, req.keep_alive) as model:
        tokens, _images = await _tokenize(model, prompt_text, parts)
        return len(tokens)


def _offered_tools(ref: ModelRef, req: ChatRequest) -> list[Tool]:
    """The tools the model is shown: none at all for `tool_choice: "none"`."""
    tools = [] if req.tool_choice.mode is ToolChoiceMode.NONE else req.tools
    if tools:
        ref.require("tools")
    return tools


async def _chat_prompt_text(ref: ModelRef, req: ChatRequest, tools: list[Tool]) -> str:
    """The chat prompt, rendered in a worker thread (400 on a template error)."""
    return await _render(
        chat_prompt, ref.resolved, ref.info, req.messages, tools=tools, think=req.think
    )


def _chat_grammar(
    req: ChatRequest, tools: list[Tool], hint: str | None, *, think: bool, prompt_text: str
) -> str | None:
    """The grammar of `format`, or the one that forces a tool call (never both)."""
    if not req.tool_choice.forces_call:
        return grammar_for(req.format)
    if req.format is not None:
        raise RequestError(400, "format cannot be combined with a tool_choice that forces a call")
    thinking = None
    if think:
        thinking = "open" if prompt_text.rstrip().endswith("<think>") else "optional"
    return tool_choice_grammar(tools, req.tool_choice, hint, thinking)


async def embed_texts(
    state: ServerState,
    ref: ModelRef,
    inputs: list[str],
    *,
    options,
    keep_alive,
    truncate,
    dimensions,
):
    """Embed `inputs` with `ref`; returns (the engine's EmbedResult, the loaded model)."""
    async with use_model(state, ref, options, keep_alive) as model:
        try:
            return await model.embed(inputs, truncate=truncate, dimensions=dimensions), model
        except EngineError as exc:
            raise RequestError(exc.status, str(exc)) from None


# ---------------------------------------------------------------- native chunks


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


def _native_chunk(
    ref: ModelRef, kind: str, thinking: str, content: str, calls: list
) -> dict[str, Any]:
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
    return out


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
    with_context: bool = False,
    truncated: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """Native chunks of one generation (`kind` is "generate" or "chat"); the last one carries
    the metrics, and `context` when `with_context` (generate only). `truncated`: the prompt
    lost old messages before it reached the engine (said as `prompt_truncated`)."""
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
            out = _native_chunk(ref, kind, thinking, content, calls)
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
            if chunk.stop_sequence:
                # for the API styles that report it (Anthropic); the native routes drop it
                out["stop_sequence"] = chunk.stop_sequence
            if chunk.truncated or truncated:
                # unlike Ollama, say so: the prompt did not fit num_ctx and lost its middle
                out["prompt_truncated"] = True
            if kind == "generate" and with_context:
                out["context"] = list(chunk.context)
            state.metrics.record_generation(
                ref.name, chunk.prompt_eval_count, chunk.eval_count, chunk.prompt_cached_count
            )
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
