"""`power run` without the chat: its flags, the request settings, printing a streamed answer
(spinner until the first piece, thinking apart, word wrap, `--verbose` timings), one-shot
prompts through /api/generate, embeddings for embedding models, pulling a missing model.

A prompt from the arguments, `--prompt` or piped stdin runs once and exits; with none, and
both stdin and stdout on a terminal, `main.cmd_run` hands over to `interactive.ChatSession`
(which builds on this module; this module never imports it).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import attrs

from power import durations
from power.cli import display
from power.cli.common import CommandError, out, pull_with_progress
from power.cli.progress import Progress
from power.client import Client, ResponseError
from power.options import OptionError, coerce_option

COLOR_GREY = "\x1b[38;5;245m"
COLOR_BOLD = "\x1b[1m"
COLOR_RESET = "\x1b[0m"

#: `power run` flags that become request options, with the option each sets.
RUN_OPTION_FLAGS = {
    "--temperature": "temperature",
    "--top-p": "top_p",
    "--top-k": "top_k",
    "--num-predict": "num_predict",
    "--num-ctx": "num_ctx",
    "--repeat-penalty": "repeat_penalty",
    "--seed": "seed",
}
THINK_LEVELS = {
    "true": True,
    "false": False,
    "high": "high",
    "medium": "medium",
    "low": "low",
    "max": "max",
}


@attrs.define
class RunSettings:
    """Everything a run or chat session sends; `/set` commands change it in place."""

    model: str
    options: dict[str, Any] = attrs.field(factory=dict)
    system: str = ""
    template: str = ""
    format: Any = None
    keep_alive: Any = None
    think: Any = None
    think_explicit: bool = False
    hide_thinking: bool = False
    verbose: bool = False
    word_wrap: bool = True
    parent_model: str = ""
    loaded_messages: list[dict[str, Any]] = attrs.field(factory=list)
    messages: list[dict[str, Any]] = attrs.field(factory=list)


# ---------------------------------------------------------------- flags


def parse_format(value: str | None) -> Any:
    """`--format`: "json", a JSON schema given as text, or the path of a file holding one."""
    if not value:
        return None
    if value == "json":
        return "json"
    path = Path(value).expanduser()
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise CommandError(
            f"invalid --format: expected json, a JSON schema or a file with one ({exc})"
        ) from exc
    if not isinstance(schema, dict):
        raise CommandError("invalid --format: a JSON schema must be an object")
    return schema


def parse_keep_alive(value: str | None) -> Any:
    """A number is seconds (sent as a JSON number); anything else is a duration like "5m"."""
    if value is None:
        return None
    try:
        durations.parse_keep_alive(value)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() else number


def parse_think(value: str | None) -> Any:
    if value is None:
        return None
    if value.lower() not in THINK_LEVELS:
        raise CommandError(
            f'invalid value for --think: "{value}" (must be true, false, high, medium, low, or max)'
        )
    return THINK_LEVELS[value.lower()]


def settings_from_args(args: dict[str, Any]) -> RunSettings:
    settings = RunSettings(model=args["MODEL"])
    for flag, option in RUN_OPTION_FLAGS.items():
        if args.get(flag) is not None:
            try:
                settings.options[option] = coerce_option(option, args[flag])
            except OptionError as exc:
                raise CommandError(f"invalid value for {flag}: {exc}") from exc
    settings.system = args.get("--system") or ""
    settings.template = args.get("--template") or ""
    settings.format = parse_format(args.get("--format"))
    settings.keep_alive = parse_keep_alive(args.get("--keep-alive") or args.get("--keepalive"))
    settings.think = parse_think(args.get("--think"))
    settings.think_explicit = args.get("--think") is not None
    settings.hide_thinking = bool(args.get("--hidethinking"))
    settings.verbose = bool(args.get("--verbose"))
    settings.word_wrap = not args.get("--nowordwrap") and sys.stdout.isatty()
    return settings


# ---------------------------------------------------------------- answers


@attrs.define
class AnswerPrinter:
    """Writes a streamed answer: thinking (grey, between markers) then content, word-wrapped."""

    stream: TextIO
    wrapper: display.WordWrapper
    hide_thinking: bool = False
    plain: bool = False
    thinking_open: bool = False
    thinking_text: str = ""

    def feed(self, content: str, thinking: str = "", tool_calls: list[Any] | None = None) -> None:
        if thinking and not self.hide_thinking:
            if not self.thinking_open:
                self._write(
                    "Thinking...\n"
                    if self.plain
                    else f"{COLOR_GREY}{COLOR_BOLD}Thinking...\n{COLOR_RESET}{COLOR_GREY}"
                )
                self.thinking_open = True
            self.thinking_text += thinking
            self._write(self.wrapper.feed(thinking))
        if self.thinking_open and (content or tool_calls):
            closing = "" if self.thinking_text.endswith("\n") else "\n"
            marker = "...done thinking.\n\n"
            self._write(
                closing
                + (marker if self.plain else f"{COLOR_GREY}{COLOR_BOLD}{marker}{COLOR_RESET}")
            )
            self.thinking_open = False
            self.wrapper = display.WordWrapper(self.wrapper.width, self.wrapper.enabled)
        if content:
            self._write(self.wrapper.feed(content))
        for call in tool_calls or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            arguments = json.dumps(function.get("arguments", {}))
            self._write(f"\nTool call: {function.get('name', '')}({arguments})\n")

    def _write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()


def answer_printer(settings: RunSettings) -> AnswerPrinter:
    width = shutil.get_terminal_size((80, 24)).columns
    return AnswerPrinter(
        sys.stdout,
        display.WordWrapper(width, settings.word_wrap),
        hide_thinking=settings.hide_thinking,
        plain=not sys.stdout.isatty(),
    )


def stream_answer(
    chunks: Iterator[dict[str, Any]], settings: RunSettings, chat: bool
) -> tuple[str, str, dict[str, Any] | None]:
    """Print a streamed answer with a spinner until its first piece.

    Returns (content, thinking, final chunk or None if interrupted). Ctrl+C closes the
    response (the server cancels the request) and returns what was written so far.
    """
    progress = Progress()
    progress.spinner("")
    printer = answer_printer(settings)
    content: list[str] = []
    final = None
    try:
        for chunk in chunks:
            message = chunk.get("message") or {} if chat else chunk
            piece = message.get("content" if chat else "response") or ""
            thinking = message.get("thinking") or ""
            tool_calls = message.get("tool_calls")
            if piece or tool_calls or (thinking and not settings.hide_thinking):
                progress.stop_and_clear()
            printer.feed(piece, thinking, tool_calls)
            content.append(piece)
            if chunk.get("done"):
                final = chunk
    except KeyboardInterrupt:
        pass
    finally:
        progress.stop_and_clear()
        close = getattr(chunks, "close", None)
        if close:
            close()
    return "".join(content), printer.thinking_text, final


def _request_fields(settings: RunSettings) -> dict[str, Any]:
    return {
        "format": settings.format,
        "options": settings.options or None,
        "keep_alive": settings.keep_alive,
        "think": settings.think,
    }


def generate_once(client: Client, settings: RunSettings, prompt: str) -> None:
    """One prompt through /api/generate, printed as it streams, then Ollama's blank line."""
    chunks = client.generate(
        settings.model,
        prompt,
        stream=True,
        system=settings.system or None,
        template=settings.template or None,
        **_request_fields(settings),
    )
    _, _, final = stream_answer(chunks, settings, chat=False)
    if prompt:
        out("\n")
    if final is not None and settings.verbose:
        sys.stderr.write(display.timing_summary(final))


def chat_once(client: Client, settings: RunSettings) -> dict[str, Any] | None:
    """Send the conversation to /api/chat; returns the assistant message written (even if cut)."""
    fields = _request_fields(settings)
    if settings.template:
        fields["template"] = settings.template
    chunks = client.chat(settings.model, settings.messages, stream=True, **fields)
    content, thinking, final = stream_answer(chunks, settings, chat=True)
    out("\n")
    if final is not None and settings.verbose:
        sys.stderr.write(display.timing_summary(final))
    if not content and not thinking:
        return None
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return message


# ---------------------------------------------------------------- run


def show_or_pull(client: Client, name: str, insecure: bool) -> dict[str, Any]:
    """The model's /api/show, pulling it first if the server does not have it."""
    try:
        return client.show(name)
    except ResponseError as exc:
        if exc.status_code != 404:
            raise
    pull_with_progress(client, name, insecure)
    return client.show(name)


def apply_show(settings: RunSettings, info: dict[str, Any]) -> None:
    settings.parent_model = (info.get("details") or {}).get("parent_model") or ""
    settings.loaded_messages = list(info.get("messages") or [])
    if not settings.think_explicit:
        settings.think = True if "thinking" in (info.get("capabilities") or []) else None


def load_model(client: Client, settings: RunSettings) -> None:
    """Load the model with a spinner (an empty generate)."""
    progress = Progress()
    progress.spinner("")
    try:
        client.generate(settings.model, "", keep_alive=settings.keep_alive, think=settings.think)
    finally:
        progress.stop_and_clear()


def read_piped_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    return sys.stdin.read()


def embed_once(client: Client, settings: RunSettings, prompt: str) -> int:
    if not prompt:
        raise CommandError(
            f'embedding models require input text. Usage: power run {settings.model} "your text here"'
        )
    response = client.embed(settings.model, prompt, keep_alive=settings.keep_alive)
    embeddings = response.get("embeddings") or []
    if not embeddings:
        raise CommandError("no embeddings returned")
    out(json.dumps(embeddings[0]))
    return 0
