"""Turn a conversation into the prompt string exactly as Ollama does.

Which template renders a prompt:
1. the model's Go TEMPLATE (Ollama's text/template syntax), when it has one;
2. else the GGUF's Jinja `tokenizer.chat_template`, rendered with jinja2 in a sandbox the way
   Hugging Face and llama.cpp do (`messages`, `tools`, `add_generation_prompt=True`, `bos_token`,
   `eos_token`, `raise_exception`, `strftime_now`);
3. else Ollama's default template `{{ .Prompt }}`.

Go templates get Ollama's values. A template that mentions `.Messages` runs once with `.System`
(every system message, joined by a blank line), `.Messages` (consecutive messages of one role
merged, tool messages excepted), `.Tools`, `.Response` (empty), `.Think`, `.ThinkLevel` and
`.IsThinkSet`. Any other template runs once per turn with `.System`, `.Prompt` and `.Response`, and
the last turn stops right after `{{ .Response }}` so the model writes the answer. A template that
mentions neither `.Messages` nor `.Response` gets `{{ .Response }}` appended, as Ollama does.

The model's SYSTEM applies when the conversation does not start with a system message (Ollama
looks at the first message only). Images are not tagged into the text (`[img-N]`): power renders
text prompts.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from power.gotemplate.template import Template, TemplateError
from power.messages import Message, Tool
from power.prompt.values import message_value, think_values, tools_value

__all__ = [
    "DEFAULT_TEMPLATE",
    "TemplateError",
    "collate",
    "fit_messages",
    "ollama_template",
    "render_chat",
    "render_generate",
    "render_jinja",
    "template_uses",
]

#: Ollama's template for a model that has none.
DEFAULT_TEMPLATE = "{{ .Prompt }}"


@functools.lru_cache(maxsize=128)
def ollama_template(source: str) -> Template:
    """Parse a Go TEMPLATE as Ollama does (raises `TemplateError` when Ollama would refuse it).

    Besides Go's own checks, a `{{template}}` call without an argument is refused, and a template
    that mentions neither `.Messages` nor `.Response` gets `{{ .Response }}` appended.
    """
    template = Template.parse(source)
    names = template.identifiers()
    if "messages" not in names and "response" not in names:
        template = template.with_appended_field("Response")
    return template


def template_uses(template: str, field: str) -> bool:
    """Whether a Go template mentions `field` (case-insensitive), as Ollama decides capabilities:
    `Tools` → tools, `Suffix` → insert. A template that does not parse uses nothing."""
    try:
        return ollama_template(template).references(field)
    except TemplateError:
        return False


def collate(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    """Ollama's collation: (every system message joined by a blank line, the messages with
    consecutive messages of one role merged into the first of them, tool messages excepted)."""
    system = [m.content for m in messages if m.role == "system"]
    collated: list[Message] = []
    for message in messages:
        if collated and collated[-1].role == message.role and message.role != "tool":
            previous = collated[-1]
            collated[-1] = Message(
                role=previous.role,
                content=previous.content + "\n\n" + message.content,
                images=previous.images,
                thinking=previous.thinking,
                tool_calls=previous.tool_calls,
                tool_name=previous.tool_name,
                tool_call_id=previous.tool_call_id,
            )
        else:
            collated.append(message)
    return "\n\n".join(system), collated


def _with_default_system(messages: Sequence[Message], system: str | None) -> list[Message]:
    result = list(messages)
    if system and (not result or result[0].role != "system"):
        result.insert(0, Message(role="system", content=system))
    return result


def _execute_go(
    template: Template,
    messages: Sequence[Message],
    *,
    tools: list[Tool] | None,
    think: bool | str | None,
    prompt: str = "",
    suffix: str = "",
) -> str:
    """Ollama's `Template.Execute` over its `Values`."""
    think_fields = think_values(think)
    if prompt and suffix:
        return template.execute(
            {"Prompt": prompt, "Suffix": suffix, "Response": "", **think_fields}
        )
    system, collated = collate(messages)
    if template.references("messages"):
        return template.execute(
            {
                "System": system,
                "Messages": [message_value(m) for m in collated],
                "Tools": tools_value(tools),
                "Response": "",
                **think_fields,
            }
        )
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(template.execute({**turn, **think_fields}))
        turn.update(System="", Prompt="", Response="")

    for message in collated:
        if message.role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = message.content
        elif message.role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = message.content
        elif message.role == "assistant":
            turn["Response"] = message.content
    out.append(template.cut_after_field("Response").execute({**turn, **think_fields}))
    return "".join(out)


def render_chat(
    messages: list[Message],
    *,
    template: str | None,
    jinja_template: str | None = None,
    system: str | None = None,
    tools: list[Tool] | None = None,
    think: bool | str | None = None,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """The prompt for a chat (Ollama's /api/chat) ending where the assistant's answer begins.

    `messages` are the model's MESSAGEs followed by the request's; `template` is the model's Go
    TEMPLATE (None or empty: none), `jinja_template` the GGUF's chat template, `system` the
    model's SYSTEM (used unless the first message is a system message), `think` the request's
    think value (bool or level), `special_tokens` the strings of `bos_token`, `eos_token`, … for
    Jinja. Raises `TemplateError` when the template does not parse or fails to execute.
    """
    conversation = _with_default_system(messages, system)
    if not template and jinja_template:
        return render_jinja(
            jinja_template, conversation, tools=tools, think=think, special_tokens=special_tokens
        )
    parsed = ollama_template(template or DEFAULT_TEMPLATE)
    return _execute_go(parsed, conversation, tools=tools, think=think)


def render_generate(
    prompt: str,
    *,
    template: str | None,
    jinja_template: str | None = None,
    system: str | None = None,
    suffix: str | None = None,
    think: bool | str | None = None,
    special_tokens: dict[str, str] | None = None,
    messages: list[Message] | None = None,
) -> str:
    """The prompt for Ollama's /api/generate (not `raw`).

    Without a suffix this is a chat of `[system] + messages + [user prompt]` (`system` is the
    request's, else the model's; `messages` the model's MESSAGEs when no `context` is given).
    With a suffix (fill-in-the-middle) the Go template runs once with `.Prompt` and `.Suffix`
    only (no `.System`, as in Ollama); a model without a Go template then uses the default one.
    """
    if suffix and prompt:
        parsed = ollama_template(template or DEFAULT_TEMPLATE)
        return _execute_go(parsed, [], tools=None, think=think, prompt=prompt, suffix=suffix)
    conversation: list[Message] = []
    if system:
        conversation.append(Message(role="system", content=system))
    conversation.extend(messages or [])
    conversation.append(Message(role="user", content=prompt))
    return render_chat(
        conversation,
        template=template,
        jinja_template=jinja_template,
        tools=[],
        think=think,
        special_tokens=special_tokens,
    )


def fit_messages(
    messages: list[Message],
    count_tokens: Callable[[str], int],
    num_ctx: int,
    *,
    render: Callable[[list[Message]], str],
    image_tokens: int = 0,
) -> list[Message]:
    """Drop the oldest messages until the rendered prompt fits in `num_ctx` tokens (Ollama's
    chatPrompt truncation).

    Tries `messages[i:]` for i = 0, 1, … with the system messages of the dropped part kept in
    front; the first that `render`s to at most `num_ctx` tokens wins (`image_tokens` counts per
    image, 768 in Ollama for models with a projector). The latest message is always kept, even
    when it alone does not fit. Returns the messages to render.
    """
    if not messages:
        return []
    last = len(messages) - 1
    for i in range(len(messages)):
        kept = [m for m in messages[:i] if m.role == "system"] + messages[i:]
        n_tokens = count_tokens(render(kept))
        n_tokens += image_tokens * sum(len(m.images) for m in messages[i:])
        if n_tokens <= num_ctx or i == last:
            return kept
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------- Jinja chat templates


class _GenerationExtension(jinja2.ext.Extension):
    """Accept Hugging Face's `{% generation %}…{% endgeneration %}` markers; render the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def _compile_jinja(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationExtension],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _jinja_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.thinking:
        out["reasoning_content"] = message.thinking
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "type": "function",
                **({"id": call.id} if call.id else {}),
                "function": {
                    "name": call.function.name,
                    "arguments": dict(call.function.arguments),
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_name:
        out["name"] = message.tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _jinja_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    function["parameters"] = tool.function.parameters
    return {"type": tool.type, "function": function}


def render_jinja(
    source: str,
    messages: Sequence[Message],
    *,
    tools: list[Tool] | None = None,
    think: bool | str | None = None,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """Render a Hugging Face style Jinja chat template with a generation prompt.

    Messages become `{"role", "content"}` dicts with `tool_calls` (arguments as objects),
    `reasoning_content`, `name` (a tool message's tool name) and `tool_call_id` when set; `tools`
    is passed only when there are some; `enable_thinking` only when `think` is set.
    Raises `TemplateError` for syntax errors, sandbox violations and `raise_exception`.
    """
    context: dict[str, Any] = {
        "bos_token": "",
        "eos_token": "",
        **(special_tokens or {}),
        "messages": [_jinja_message(m) for m in messages],
        "add_generation_prompt": True,
    }
    if tools:
        context["tools"] = [_jinja_tool(t) for t in tools]
    if think is not None:
        context["enable_thinking"] = bool(think) and think not in ("", "false")
        if isinstance(think, str):
            context["reasoning_effort"] = think
    try:
        return _compile_jinja(source).render(**context)
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template: {exc}") from exc
