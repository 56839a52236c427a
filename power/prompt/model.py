"""The prompt text for a model of the store: which template, which SYSTEM, which MESSAGEs.

Ollama's rules, applied to a `ResolvedModel` and its GGUF header: the request's template wins,
then the model's TEMPLATE layer, then (no Go template at all) the GGUF's Jinja chat template;
the request's system prompt wins over the model's SYSTEM; the model's MESSAGEs come first.
Errors of the template itself propagate (`TemplateError`, jinja2's errors): the caller decides
what they mean (a 400 at the HTTP edge).
"""

from __future__ import annotations

from power.messages import Message, Tool
from power.prompt.images import image_messages, tag_images
from power.prompt.render import render_chat, render_generate
from power.registry.gguf_meta import GGUFInfo
from power.registry.models import ResolvedModel


def special_tokens(info: GGUFInfo) -> dict[str, str]:
    """The vocabulary's `bos_token` and `eos_token` strings, for Jinja templates."""
    out = {}
    for key, name in (
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
    ):
        value = info.get(name)
        if isinstance(value, str):
            out[key] = value
    return out


def tool_call_hint(model: ResolvedModel, info: GGUFInfo) -> str | None:
    """The template text that tells the tool-call parser which tags to watch for."""
    return model.template or info.chat_template


def chat_prompt(
    model: ResolvedModel,
    info: GGUFInfo,
    messages: list[Message],
    *,
    tools: list[Tool],
    think: bool | str | None,
) -> str:
    """The prompt of a chat turn: the model's MESSAGEs, then `messages`, up to the answer.
    Images are marked with `[img-N]` tags, N counting the images of `chat_images` in order."""
    return render_chat(
        tag_images(list(model.messages) + list(messages)),
        template=model.template,
        jinja_template=info.chat_template if not model.template else None,
        system=model.system or None,
        tools=tools or None,
        think=think,
        special_tokens=special_tokens(info),
    )


def chat_images(model: ResolvedModel, messages: list[Message]) -> list[bytes]:
    """The images of a chat turn, numbered as `chat_prompt` tags them."""
    return [image for m in list(model.messages) + list(messages) for image in m.images]


def generate_prompt(
    model: ResolvedModel,
    info: GGUFInfo,
    prompt: str,
    *,
    template: str,
    system: str,
    suffix: str,
    think: bool | str | None,
    n_images: int = 0,
) -> str:
    """The prompt of /api/generate (not raw): `template`/`system` are the request's ("" = the
    model's), `suffix` the fill-in-the-middle suffix ("" = none); each of `n_images` images gets
    a user message `[img-N]` before the prompt's (as Ollama does)."""
    template = template or model.template or ""
    return render_generate(
        prompt,
        template=template or None,
        jinja_template=None if template else info.chat_template,
        system=system or model.system or None,
        suffix=suffix or None,
        think=think,
        special_tokens=special_tokens(info),
        messages=list(model.messages) + image_messages(n_images) or None,
    )
