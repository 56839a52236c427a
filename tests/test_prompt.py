"""Prompt rendering as Ollama does it: its bundled Go templates, per-turn legacy templates,
system merging, tools, thinking values, /api/generate with a suffix, truncation, and Jinja chat
templates (a real one read from the Qwen GGUF in a slow test)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from power.messages import Message, Tool, ToolCall, ToolCallFunction, ToolFunction
from power.prompt.render import (
    TemplateError,
    collate,
    fit_messages,
    ollama_template,
    render_chat,
    render_generate,
    template_uses,
)

TEMPLATES_DIR = Path(__file__).parent / "data" / "templates"

HELLO = "Hello, how are you?"
GREAT = "I'm doing great. How can I help you today?"
SHOW = "I'd like to show off how chat templating works!"
SYSTEM = "You are a helpful assistant."

CONVERSATIONS = [
    [Message("user", HELLO)],
    [Message("user", HELLO), Message("assistant", GREAT), Message("user", SHOW)],
    [
        Message("system", SYSTEM),
        Message("user", HELLO),
        Message("assistant", GREAT),
        Message("user", SHOW),
    ],
]

# What each of Ollama's bundled templates (template/*.gotmpl, vendored under tests/data/templates)
# must give for the three conversations above, worked out from Go's trimming and scoping rules.
EXPECTED = {
    "alfred": (
        "<start_user>{HELLO}<end_message><start_assistant>",
        "<start_user>{HELLO}<end_message><start_assistant>{GREAT}<end_message><start_user>{SHOW}<end_message><start_assistant>",
        "<start_system>{SYSTEM}<end_message><start_user>{HELLO}<end_message><start_assistant>{GREAT}<end_message><start_user>{SHOW}<end_message><start_assistant>",
    ),
    "alpaca": (
        "### Instruction:\n{HELLO}\n\n### Response:\n",
        "### Instruction:\n{HELLO}\n\n### Response:\n{GREAT}\n\n### Instruction:\n{SHOW}\n\n### Response:\n",
        "{SYSTEM}\n\n### Instruction:\n{HELLO}\n\n### Response:\n{GREAT}\n\n### Instruction:\n{SHOW}\n\n### Response:\n",
    ),
    "chatml": (
        "<|im_start|>user\n{HELLO}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{HELLO}<|im_end|>\n<|im_start|>assistant\n{GREAT}<|im_end|>\n<|im_start|>user\n{SHOW}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{HELLO}<|im_end|>\n<|im_start|>assistant\n{GREAT}<|im_end|>\n<|im_start|>user\n{SHOW}<|im_end|>\n<|im_start|>assistant\n",
    ),
    "chatqa": (
        "User: {HELLO}\n\nAssistant:",
        "User: {HELLO}\n\nAssistant: {GREAT}\n\nUser: {SHOW}\n\nAssistant:",
        "System: {SYSTEM}\n\nUser: {HELLO}\n\nAssistant: {GREAT}\n\nUser: {SHOW}\n\nAssistant:",
    ),
    "codellama-70b-instruct": (
        "Source: user\n\n {HELLO} <step> Source: assistant\nDestination: user\n\n ",
        "Source: user\n\n {HELLO} <step> Source: assistant\n\n {GREAT} <step> Source: user\n\n {SHOW} <step> Source: assistant\nDestination: user\n\n ",
        "Source: system\n\n {SYSTEM} <step> Source: user\n\n {HELLO} <step> Source: assistant\n\n {GREAT} <step> Source: user\n\n {SHOW} <step> Source: assistant\nDestination: user\n\n ",
    ),
    "command-r": (
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{HELLO}<|END_OF_TURN_TOKEN|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n",
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{HELLO}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{GREAT}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>{SHOW}<|END_OF_TURN_TOKEN|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n",
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{SYSTEM}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>{HELLO}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{GREAT}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>{SHOW}<|END_OF_TURN_TOKEN|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n",
    ),
    "falcon-instruct": (
        "User:\n{HELLO}\nFalcon:\n",
        "User:\n{HELLO}\nFalcon:\n{GREAT}\nUser:\n{SHOW}\nFalcon:\n",
        "System: {SYSTEM}\nUser:\n{HELLO}\nFalcon:\n{GREAT}\nUser:\n{SHOW}\nFalcon:\n",
    ),
    "gemma-instruct": (
        "<start_of_turn>user\n{HELLO}<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\n{HELLO}<end_of_turn>\n<start_of_turn>model\n{GREAT}<end_of_turn>\n<start_of_turn>user\n{SHOW}<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\n{SYSTEM}\n{HELLO}<end_of_turn>\n<start_of_turn>model\n{GREAT}<end_of_turn>\n<start_of_turn>user\n{SHOW}<end_of_turn>\n<start_of_turn>model\n",
    ),
    "gemma3-instruct": (
        "<start_of_turn>user\n{HELLO}<end_of_turn>\n<start_of_turn>model\n\n",
        "<start_of_turn>user\n{HELLO}<end_of_turn>\n<start_of_turn>model\n{GREAT}<end_of_turn>\n<start_of_turn>user\n{SHOW}<end_of_turn>\n<start_of_turn>model\n\n",
        "<start_of_turn>user\n{SYSTEM}\n\n{HELLO}<end_of_turn>\n<start_of_turn>model\n{GREAT}<end_of_turn>\n<start_of_turn>user\n{SHOW}<end_of_turn>\n<start_of_turn>model\n\n",
    ),
    "granite-instruct": (
        "Question:\n{HELLO}\n\nAnswer:\n",
        "Question:\n{HELLO}\n\nAnswer:\n{GREAT}\n\nQuestion:\n{SHOW}\n\nAnswer:\n",
        "System:\n{SYSTEM}\n\nQuestion:\n{HELLO}\n\nAnswer:\n{GREAT}\n\nQuestion:\n{SHOW}\n\nAnswer:\n",
    ),
    "llama2-chat": (
        "[INST] <<SYS>><</SYS>>\n\n{HELLO} [/INST]",
        "[INST] <<SYS>><</SYS>>\n\n{HELLO} [/INST] {GREAT}</s><s>[INST] <<SYS>><</SYS>>\n\n{SHOW} [/INST]",
        "[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{HELLO} [/INST] {GREAT}</s><s>[INST] <<SYS>><</SYS>>\n\n{SHOW} [/INST]",
    ),
    "llama3-instruct": (
        "<|start_header_id|>user<|end_header_id|>\n\n{HELLO}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|start_header_id|>user<|end_header_id|>\n\n{HELLO}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{GREAT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{SHOW}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{HELLO}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{GREAT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{SHOW}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "magicoder": (
        "@@ Instruction\n{HELLO}\n\n@@ Response\n",
        "@@ Instruction\n{HELLO}\n\n@@ Response\n{GREAT}\n\n@@ Instruction\n{SHOW}\n\n@@ Response\n",
        "{SYSTEM}\n\n@@ Instruction\n{HELLO}\n\n@@ Response\n{GREAT}\n\n@@ Instruction\n{SHOW}\n\n@@ Response\n",
    ),
    "mistral-instruct": (
        "[INST] {HELLO}[/INST]",
        "[INST] {HELLO}[/INST] {GREAT}</s>[INST] {SHOW}[/INST]",
        "[INST] {SYSTEM}\n\n{HELLO}[/INST] {GREAT}</s>[INST] {SHOW}[/INST]",
    ),
    "openchat": (
        "GPT4 Correct User: {HELLO}<|end_of_turn|>GPT4 Correct Assistant:",
        "GPT4 Correct User: {HELLO}<|end_of_turn|>GPT4 Correct Assistant: {GREAT}<|end_of_turn|>GPT4 Correct User: {SHOW}<|end_of_turn|>GPT4 Correct Assistant:",
        "GPT4 Correct System: {SYSTEM}<|end_of_turn|>GPT4 Correct User: {HELLO}<|end_of_turn|>GPT4 Correct Assistant: {GREAT}<|end_of_turn|>GPT4 Correct User: {SHOW}<|end_of_turn|>GPT4 Correct Assistant:",
    ),
    "phi-3": (
        "<|user|>\n{HELLO}<|end|>\n<|assistant|>\n",
        "<|user|>\n{HELLO}<|end|>\n<|assistant|>\n{GREAT}<|end|>\n<|user|>\n{SHOW}<|end|>\n<|assistant|>\n",
        "<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{HELLO}<|end|>\n<|assistant|>\n{GREAT}<|end|>\n<|user|>\n{SHOW}<|end|>\n<|assistant|>\n",
    ),
    "solar-instruct": (
        "### User:\n{HELLO}\n\n### Assistant:\n",
        "### User:\n{HELLO}\n\n### Assistant:\n{GREAT}</s>\n\n### User:\n{SHOW}\n\n### Assistant:\n",
        "### System:\n{SYSTEM}\n\n### User:\n{HELLO}\n\n### Assistant:\n{GREAT}</s>\n\n### User:\n{SHOW}\n\n### Assistant:\n",
    ),
    "starcoder2-instruct": (
        "### Instruction\n{HELLO}\n\n### Response\n",
        "### Instruction\n{HELLO}\n\n### Response\n{GREAT}<|endoftext|>\n\n### Instruction\n{SHOW}\n\n### Response\n",
        "{SYSTEM}\n\n### Instruction\n{HELLO}\n\n### Response\n{GREAT}<|endoftext|>\n\n### Instruction\n{SHOW}\n\n### Response\n",
    ),
    "vicuna": (
        "USER: {HELLO}\nASSISTANT:",
        "USER: {HELLO}\nASSISTANT: {GREAT}</s>\nUSER: {SHOW}\nASSISTANT:",
        "{SYSTEM}\n\nUSER: {HELLO}\nASSISTANT: {GREAT}</s>\nUSER: {SHOW}\nASSISTANT:",
    ),
    "zephyr": (
        "<|user|>\n{HELLO}</s>\n<|assistant|>\n",
        "<|user|>\n{HELLO}</s>\n<|assistant|>\n{GREAT}</s>\n<|user|>\n{SHOW}</s>\n<|assistant|>\n",
        "<|system|>\n{SYSTEM}</s>\n<|user|>\n{HELLO}</s>\n<|assistant|>\n{GREAT}</s>\n<|user|>\n{SHOW}</s>\n<|assistant|>\n",
    ),
}


def _expand(text: str) -> str:
    for key, value in (
        ("{HELLO}", HELLO),
        ("{GREAT}", GREAT),
        ("{SHOW}", SHOW),
        ("{SYSTEM}", SYSTEM),
    ):
        text = text.replace(key, value)
    return text


def test_every_bundled_template_has_expectations() -> None:
    assert sorted(p.stem for p in TEMPLATES_DIR.glob("*.gotmpl")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize(
    "i_conversation", [0, 1, 2], ids=["user", "user-assistant-user", "system-user-assistant-user"]
)
def test_bundled_templates(name: str, i_conversation: int) -> None:
    template = (TEMPLATES_DIR / f"{name}.gotmpl").read_text()
    prompt = render_chat(CONVERSATIONS[i_conversation], template=template)
    assert prompt == _expand(EXPECTED[name][i_conversation])


# ---------------------------------------------------------------- templates without .Messages

MISTRAL_NO_RESPONSE = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_RESPONSE = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}"
)
CHATML_LEGACY = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


@pytest.mark.parametrize("template", [MISTRAL_NO_RESPONSE, MISTRAL_RESPONSE])
def test_legacy_template_runs_once_per_turn(template: str) -> None:
    # Without {{ .Response }} Ollama appends one, so both spellings give the same prompt.
    messages = [Message("user", "Hi!"), Message("assistant", "Hello."), Message("user", "Name?")]
    assert (
        render_chat(messages, template=template) == "[INST] Hi![/INST] Hello.[INST] Name?[/INST] "
    )
    with_system = [Message("system", "Be kind."), *messages]
    assert render_chat(with_system, template=template) == (
        "[INST] Be kind.\n\nHi![/INST] Hello.[INST] Name?[/INST] "
    )


def test_legacy_last_turn_stops_at_response() -> None:
    # The last turn is cut right after {{ .Response }}: "<|im_end|>\n" is not written, so an
    # assistant message at the end is continued.
    messages = [
        Message("system", "S"),
        Message("user", "U1"),
        Message("assistant", "A1"),
        Message("user", "U2"),
    ]
    assert render_chat(messages, template=CHATML_LEGACY) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
    )
    partial = [Message("user", "Name?"), Message("assistant", "My name is")]
    assert render_chat(partial, template=MISTRAL_RESPONSE) == "[INST] Name?[/INST] My name is"


def test_no_template_uses_ollamas_default() -> None:
    assert render_chat([Message("user", "once upon")], template=None) == "once upon"
    assert render_generate("a time", template=None, system="ignored by {{ .Prompt }}") == "a time"


# ---------------------------------------------------------------- system messages and merging


def test_system_messages_join_and_consecutive_roles_merge() -> None:
    template = "{{ .System }}|{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
    messages = [
        Message("system", "s1"),
        Message("system", "s2"),
        Message("user", "u1"),
        Message("user", "u2"),
        Message("tool", "t1"),
        Message("tool", "t2"),
        Message("user", "u3"),
    ]
    assert render_chat(messages, template=template) == (
        "s1\n\ns2|[system:s1\n\ns2][user:u1\n\nu2][tool:t1][tool:t2][user:u3]"
    )
    system, collated = collate(messages)
    assert system == "s1\n\ns2"
    assert [m.role for m in collated] == ["system", "user", "tool", "tool", "user"]


def test_model_system_applies_unless_the_conversation_starts_with_one() -> None:
    template = "{{ .System }}|{{ range .Messages }}{{ .Role }} {{ end }}"
    assert (
        render_chat([Message("user", "u")], template=template, system="model")
        == "model|system user "
    )
    own = [Message("system", "mine"), Message("user", "u")]
    assert render_chat(own, template=template, system="model") == "mine|system user "


def test_fields_ollama_does_not_pass_print_no_value() -> None:
    # A .Messages template gets no .Prompt: Go prints a nil map entry as <no value>.
    template = "{{ range .Messages }}{{ end }}[{{ .Prompt }}]{{ if .Suffix }}x{{ end }}"
    assert render_chat([Message("user", "u")], template=template) == "[<no value>]"


# ---------------------------------------------------------------- tools

WEATHER = Tool(
    ToolFunction(
        name="get_weather",
        description="Get the current weather in a city",
        parameters={
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "description": "Temperature unit", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    )
)
WEATHER_FUNCTION_JSON = (
    '{"name":"get_weather","description":"Get the current weather in a city",'
    '"parameters":{"type":"object","required":["city"],"properties":{'
    '"city":{"type":"string","description":"The city"},'
    '"unit":{"type":"string","description":"Temperature unit","enum":["c","f"]}}}}'
)

QWEN_STYLE = """\
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def test_tools_and_tool_calls_render_in_a_go_template() -> None:
    call = ToolCall(ToolCallFunction(name="get_weather", arguments={"unit": "c", "city": "Paris"}))
    messages = [
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", "sunny, 21C", tool_name="get_weather"),
    ]
    prompt = render_chat(messages, template=QWEN_STYLE, tools=[WEATHER])
    assert prompt == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n"
        '{"type": "function", "function": ' + WEATHER_FUNCTION_JSON + "}\n"
        "</tools><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city":"Paris","unit":"c"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny, 21C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without tools the template's tool section disappears.
    plain = render_chat([Message("user", "Hi")], template=QWEN_STYLE)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_tool_values_json_and_fields() -> None:
    template = (
        "{{ range .Messages }}{{ end }}{{ json .Tools }}\n{{ .Tools }}\n"
        "{{ range .Tools }}{{ .Type }} {{ .Function.Name }}: "
        "{{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}={{ $p.Type }}"
        "/{{ toTypeScriptType $p }}/{{ $p.Description }};{{ end }}"
        " required={{ .Function.Parameters.Required }}{{ end }}"
    )
    prompt = render_chat([Message("user", "u")], template=template, tools=[WEATHER])
    tool_json = '[{"type":"function","function":' + WEATHER_FUNCTION_JSON + "}]"
    assert prompt == (
        f"{tool_json}\n{tool_json}\n"
        "function get_weather: city=string/string/The city;unit=string/string/Temperature unit;"
        " required=[city]"
    )


def test_tool_json_escapes_html_like_go() -> None:
    tool = Tool(ToolFunction(name="f", description="a < b & c", parameters={"type": "object"}))
    prompt = render_chat(
        [Message("user", "u")],
        template="{{ range .Messages }}{{ end }}{{ json .Tools }}",
        tools=[tool],
    )
    assert (
        prompt
        == '[{"type":"function","function":{"name":"f","description":"a \\u003c b \\u0026 c","parameters":{"type":"object","properties":null}}}]'
    )


def test_tool_call_fields_on_messages() -> None:
    call = ToolCall(ToolCallFunction(name="f", arguments={"b": 2, "a": [1]}, index=3), id="call_1")
    template = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .ID }} {{ .Function.Index }} {{ .Function.Name }} "
        "{{ .Function.Arguments }} {{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }};{{ end }}"
        "{{ end }}{{ if .ToolCalls }}!{{ end }}{{ end }}"
    )
    messages = [Message("user", "u"), Message("assistant", "", tool_calls=[call])]
    assert render_chat(messages, template=template) == 'call_1 3 f {"a":[1],"b":2} a=[1];b=2;!'


# ---------------------------------------------------------------- thinking


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (None, "false||false"),
        (True, "true|medium|true"),
        (False, "false||true"),
        ("high", "true|high|true"),
    ],
)
def test_think_values(think: bool | str | None, expected: str) -> None:
    template = "{{ range .Messages }}{{ end }}{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    assert render_chat([Message("user", "u")], template=template, think=think) == expected
    legacy = "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    assert render_chat([Message("user", "u")], template=legacy, think=think) == expected


# ---------------------------------------------------------------- /api/generate

FIM = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"


def test_generate_with_suffix() -> None:
    assert (
        render_generate("def add(", template=FIM, suffix="return x")
        == "<PRE> def add( <SUF>return x <MID>"
    )
    assert render_generate("hello", template=FIM) == "hello"
    # With a suffix Ollama passes no .System at all.
    template = "{{ .Prompt }}|{{ .Suffix }}|{{ .System }}|{{ .Response }}"
    assert render_generate("p", template=template, suffix="s", system="sys") == "p|s|<no value>|"


def test_generate_builds_a_conversation() -> None:
    template = "{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    assert render_generate("hi", template=template, system="sys") == "system:sys;user:hi;"
    history = [Message("user", "old"), Message("assistant", "reply")]
    assert (
        render_generate("hi", template=template, messages=history)
        == "user:old;assistant:reply;user:hi;"
    )


def test_template_uses() -> None:
    assert template_uses(FIM, "Suffix")
    assert not template_uses(FIM, "Tools")
    assert template_uses(QWEN_STYLE, "Tools")
    assert template_uses(QWEN_STYLE, "toolcalls")
    assert not template_uses("{{ .Prompt ", "Prompt")  # does not parse: uses nothing


def test_invalid_templates_raise() -> None:
    with pytest.raises(TemplateError, match="unclosed action"):
        render_chat([Message("user", "u")], template="{{ .Prompt ")
    with pytest.raises(TemplateError, match="undefined template specified"):
        ollama_template('{{define "x"}}{{template "x"}}{{end}}{{template "x"}}')


# ---------------------------------------------------------------- truncation


def _words(text: str) -> int:
    return len(text.split())


def _join(messages: list[Message]) -> str:
    return " ".join(m.content for m in messages)


def test_fit_messages_drops_oldest_and_keeps_system() -> None:
    messages = [
        Message("system", "s"),
        Message("user", "a a a"),
        Message("assistant", "b b b"),
        Message("user", "c c"),
    ]
    assert fit_messages(messages, _words, 9, render=_join) == messages
    kept = fit_messages(messages, _words, 6, render=_join)
    assert [m.content for m in kept] == ["s", "b b b", "c c"]
    # The latest message stays even when it alone does not fit.
    kept = fit_messages(messages, _words, 1, render=_join)
    assert [m.content for m in kept] == ["s", "c c"]
    assert fit_messages([], _words, 10, render=_join) == []


def test_fit_messages_counts_images() -> None:
    messages = [Message("user", "a", images=[b"x"]), Message("user", "b")]
    assert len(fit_messages(messages, _words, 5, render=_join)) == 2
    assert len(fit_messages(messages, _words, 5, render=_join, image_tokens=768)) == 1


# ---------------------------------------------------------------- Jinja chat templates

SMALL_JINJA = (
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}"
    "{% if m.name %}({{ m.name }}){% endif %}{{ '\\n' }}{% endfor %}"
    "{% if tools %}{{ tools | tojson }}{{ '\\n' }}{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_jinja_template_without_go_template() -> None:
    call = ToolCall(ToolCallFunction(name="f", arguments={"a": "é"}))
    messages = [
        Message("user", "hi"),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", "ok", tool_name="f"),
    ]
    tool = Tool(ToolFunction(name="f", parameters={"type": "object"}))
    prompt = render_chat(
        messages,
        template=None,
        jinja_template=SMALL_JINJA,
        system="sys",
        tools=[tool],
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    )
    assert prompt == (
        '<s><|system|>sys\n<|user|>hi\n<|assistant|>[f {"a": "é"}]\n<|tool|>ok(f)\n'
        '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]\n<|assistant|>'
    )
    # A Go template, when present, wins over the Jinja one.
    assert (
        render_chat([Message("user", "x")], template="{{ .Prompt }}", jinja_template=SMALL_JINJA)
        == "x"
    )


def test_jinja_errors_and_sandbox() -> None:
    with pytest.raises(TemplateError, match="no tools here"):
        render_chat(
            [Message("user", "u")],
            template=None,
            jinja_template="{{ raise_exception('no tools here') }}",
        )
    with pytest.raises(TemplateError):
        render_chat(
            [Message("user", "u")], template=None, jinja_template="{{ ''.__class__.__mro__ }}"
        )
    with pytest.raises(TemplateError):
        render_chat([Message("user", "u")], template=None, jinja_template="{% for %}")


@pytest.fixture(scope="module")
def qwen_chat_template(qwen_gguf: Path) -> str:
    import gguf

    reader = gguf.GGUFReader(qwen_gguf)
    return reader.fields["tokenizer.chat_template"].contents()


@pytest.mark.slow
def test_qwen_gguf_chat_template_renders_tools(qwen_chat_template: str) -> None:
    tokens = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
    prompt = render_chat(
        [Message("user", "What is the weather in Paris?")],
        template=None,
        jinja_template=qwen_chat_template,
        tools=[WEATHER],
        special_tokens=tokens,
    )
    tool_line = json.dumps(
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER.function.description,
                "parameters": WEATHER.function.parameters,
            },
        }
    )
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n"
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{tool_line}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_qwen_gguf_chat_template_renders_a_tool_round_trip(qwen_chat_template: str) -> None:
    call = ToolCall(ToolCallFunction(name="get_weather", arguments={"city": "Paris"}))
    messages = [
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", "sunny", tool_name="get_weather"),
    ]
    prompt = render_chat(
        messages, template=None, jinja_template=qwen_chat_template, system="Be brief."
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_jinja_generation_markers_are_accepted() -> None:
    source = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert (
        render_chat(
            [Message("user", "a"), Message("user", "b")], template=None, jinja_template=source
        )
        == "ab"
    )


# ---------------------------------------------------------------- a large real-world template


def test_gpt_oss_style_template_with_tools_and_thinking() -> None:
    # gpt-oss's Ollama template (browser tool sections left out): variables assigned inside
    # ranges, toTypeScriptType in a pipeline, .Thinking, comments with trim markers.
    template = (TEMPLATES_DIR.parent / "templates_extra" / "gpt-oss-trimmed.gotmpl").read_text()
    tool = Tool(
        ToolFunction(
            name="get_weather",
            description="Get weather",
            parameters={
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City"},
                    "days": {"type": ["integer", "null"]},
                },
                "required": ["city"],
            },
        )
    )
    call = ToolCall(ToolCallFunction("get_weather", {"city": "Paris"}))
    messages = [
        Message("system", "Be terse."),
        Message("user", "Weather?"),
        Message("assistant", "", thinking="need tool", tool_calls=[call]),
        Message("tool", "sunny", tool_name="get_weather"),
    ]
    prompt = render_chat(messages, template=template, tools=[tool], think="high")
    today = datetime.date.today().isoformat()
    assert prompt == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        f"Knowledge cutoff: 2024-06\nCurrent date: {today}\n\nReasoning: high\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.\n"
        "Calls to these tools must go to the commentary channel: 'functions'.<|end|>"
        "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Get weather\ntype get_weather = (_: {\n  // City\n  city: string,\n  days: number | null,\n"
        "}) => any;\n\n} // namespace functions\n\n# Instructions\n\nBe terse.<|end|>"
        "<|start|>user<|message|>Weather?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>need tool<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city":"Paris"}<|call|>'
        "<|start|>functions.get_weather to=assistant<|message|>sunny<|end|><|start|>assistant"
    )
    # Without tools and without think: no developer block, medium reasoning by default.
    plain = render_chat([Message("user", "Hi")], template=template)
    assert plain.endswith(
        "Reasoning: medium\n\n# Valid channels: analysis, commentary, final. "
        "Channel must be included for every message.<|end|>"
        "<|start|>user<|message|>Hi<|end|><|start|>assistant"
    )
