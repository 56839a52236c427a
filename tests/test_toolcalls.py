"""ToolCallParser on recorded model outputs of each family, split every possible way."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from power.prompt.toolcalls import (
    JsonScanner,
    ToolCallMode,
    ToolCallParser,
    calls_from_json,
    json_value_end,
    markers_for_hint,
    new_tool_call_id,
)

TOOLS = {"get_weather", "get_time"}
PARIS = ("get_weather", {"city": "Paris"})


def run(chunks: list[str], tools=TOOLS, hint=None) -> tuple[str, list[tuple[str, dict, int]]]:
    parser = ToolCallParser(tools, hint)
    content, calls = [], []
    for chunk in chunks:
        text, found = parser.feed(chunk)
        content.append(text)
        calls.extend(found)
    text, found = parser.finish()
    content.append(text)
    calls.extend(found)
    for call in calls:
        assert re.fullmatch(r"call_[A-Za-z0-9]{8}", call.id)
        assert isinstance(call.function.arguments, dict)
    return "".join(content), [
        (c.function.name, c.function.arguments, c.function.index) for c in calls
    ]


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


def named(*calls):
    return [(name, args, i) for i, (name, args) in enumerate(calls)]


CASES = [
    # Qwen2.5 (what Qwen2.5-Coder-0.5B emits greedily with the get_weather tool).
    (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "",
        named(PARIS),
    ),
    # Hermes style, prose first, two calls, string arguments.
    (
        "Let me check both.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}\n</tool_call>',
        "Let me check both.\n",
        named(PARIS, ("get_time", {"zone": "CET"})),
    ),
    # Qwen3-Coder XML parameters.
    (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        "",
        named(("get_weather", {"city": "Paris", "days": 3})),
    ),
    # Llama 3.2: bare JSON with "parameters".
    (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        named(PARIS),
    ),
    # A JSON list of calls with leading whitespace.
    (
        '\n [{"name": "get_weather", "arguments": {"city": "Paris"}},'
        ' {"name": "get_time", "arguments": {}}]',
        "",
        named(PARIS, ("get_time", {})),
    ),
    # OpenAI-shaped object.
    (
        '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
        "",
        named(PARIS),
    ),
    # Fenced JSON.
    (
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        "",
        named(PARIS),
    ),
    # Mistral, old and new spellings.
    (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "",
        named(PARIS),
    ),
    (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}',
        "",
        named(PARIS, ("get_time", {})),
    ),
    (
        '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}',
        "",
        named(PARIS),
    ),
    # Llama 3.1 python_tag, two calls separated by ';'.
    (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_time", "parameters": {"zone": "UTC"}}',
        "",
        named(PARIS, ("get_time", {"zone": "UTC"})),
    ),
    # Llama 3.1 custom function tag inside prose.
    (
        'Checking. <function=get_weather>{"city": "Paris"}</function>',
        "Checking. ",
        named(PARIS),
    ),
    # DeepSeek R1 and V3.1.
    (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "",
        named(PARIS),
    ),
    (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "",
        named(PARIS),
    ),
    # Unterminated tag at the end of generation (EOS instead of </tool_call>).
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', "", named(PARIS)),
    # Not tool calls: plain prose, JSON answers, unknown names for bare JSON, broken tags.
    ("The weather in Paris is sunny.", "The weather in Paris is sunny.", []),
    ('{"answer": 42, "unit": "none"}', '{"answer": 42, "unit": "none"}', []),
    ('{"name": "Alice", "age": 30}', '{"name": "Alice", "age": 30}', []),
    ("[1, 2, 3] are numbers", "[1, 2, 3] are numbers", []),
    ("a < b and c > d; x[0] = {1}", "a < b and c > d; x[0] = {1}", []),
    ("<tool_call>not json</tool_call> ok", "<tool_call>not json</tool_call> ok", []),
    ("```python\nprint(1)\n```", "```python\nprint(1)\n```", []),
    ("", "", []),
    ("  \n", "  \n", []),
    (
        'Use {"name": "get_weather"} later',
        'Use {"name": "get_weather"} later',
        [],
    ),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_one_chunk(text, content, calls):
    assert run([text]) == (content, calls)


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_every_two_way_split(text, content, calls):
    for cut in range(len(text) + 1):
        assert run([text[:cut], text[cut:]]) == (content, calls), cut


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_character_by_character(text, content, calls):
    assert run(list(text)) == (content, calls)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=0), max_size=15))
def test_any_split_gives_the_one_chunk_result(case, cuts):
    text, content, calls = case
    assert run(split_at(text, cuts)) == (content, calls)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet='{}[]"<>:,/ namegt_wherarsTOLCAS|pyhoncl\n`', max_size=80),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_arbitrary_text_is_split_invariant(text, cuts):
    assert run(split_at(text, cuts)) == run([text])


def test_no_tools_passes_text_through_untouched():
    parser = ToolCallParser(set())
    assert parser.mode is ToolCallMode.PASSTHROUGH
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    assert parser.feed(text) == (text, [])
    assert parser.finish() == ("", [])


def test_content_streams_without_waiting_for_the_end():
    parser = ToolCallParser(TOOLS)
    assert parser.feed("Hello") == ("Hello", [])
    assert parser.feed(" world <") == (" world ", [])  # "<" may open a tag: held
    assert parser.feed("b>") == ("<b>", [])


def test_calls_are_emitted_as_soon_as_complete():
    parser = ToolCallParser(TOOLS)
    assert parser.feed('<tool_call>{"name": "get_weather", ') == ("", [])
    content, calls = parser.feed('"arguments": {"city": "Paris"}}</tool_call>')
    assert content == ""
    assert [(c.function.name, c.function.arguments) for c in calls] == [PARIS]
    content, calls = parser.feed("\n<tool_call>")
    assert (content, calls) == ("", [])
    content, calls = parser.feed('{"name": "get_time", "arguments": {}}</tool_call>')
    assert calls[0].function.index == 1


def test_a_json_answer_that_is_not_a_call_is_released_early():
    parser = ToolCallParser(TOOLS)
    assert parser.feed('{"temperature"') == ('{"temperature"', [])
    assert parser.feed(": 20}") == (": 20}", [])


def test_text_after_a_call_is_content_without_leading_whitespace():
    text = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n\nDone.'
    assert run([text]) == ("Done.", named(("get_time", {})))


def test_tagged_calls_to_unknown_tools_are_still_calls():
    text = '<tool_call>{"name": "launch", "arguments": {"n": 1}}</tool_call>'
    assert run([text]) == ("", named(("launch", {"n": 1})))


def test_template_hint_narrows_the_tags():
    qwen_template = "{% for tool in tools %}...<tool_call>\n{...}\n</tool_call>{% endfor %}"
    assert markers_for_hint(qwen_template) == ("<tool_call>",)
    assert len(markers_for_hint("no tags here")) == len(markers_for_hint(None)) > 1
    # Without <function= watched, that text is content.
    text = 'See <function=get_weather>{"city": "Paris"}</function>'
    assert run([text], hint=qwen_template) == (text, [])
    parser = ToolCallParser(TOOLS, qwen_template)
    assert parser.feed("x [TOOL") == ("x [TOOL", [])


def test_ids_are_random_and_injectable():
    assert new_tool_call_id() != new_tool_call_id()
    parser = ToolCallParser(TOOLS, new_id=lambda: "call_fixed00")
    _, calls = parser.feed('{"name": "get_time", "arguments": {}}')
    assert calls[0].id == "call_fixed00"


def test_long_json_answer_is_scanned_in_linear_time():
    # 20k tokens of a JSON answer held back because its first key could be a call's.
    parser = ToolCallParser(TOOLS)
    assert parser.feed('{"name": "report", "items": [') == ("", [])
    for _ in range(20_000):
        assert parser.feed('"x", ') == ("", [])
    content, calls = parser.feed('"y"]}')
    assert calls == [] and content.startswith('{"name": "report"') and content.endswith('"y"]}')


def test_json_value_end_and_scanner():
    assert json_value_end('{"a": "}"} tail') == 10
    assert json_value_end('[1, [2, {"x": "\\"]"}]] x') == 22
    assert json_value_end('{"a": ') == -1
    scanner = JsonScanner(0)
    assert scanner.end('{"a": "x') == -1
    assert scanner.end('{"a": "x\\"}') == -1
    assert scanner.end('{"a": "x\\"}"}') == 13
    assert scanner.end('{"a": "x\\"}"} more') == 13


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"name": "f", "arguments": {"a": 1}}, [("f", {"a": 1})]),
        ({"name": "f", "parameters": '{"a": 1}'}, [("f", {"a": 1})]),
        ({"name": "f"}, [("f", {})]),
        ({"function": {"name": "f", "arguments": ""}}, [("f", {})]),
        ([{"name": "f"}, {"name": "g", "args": {"b": 2}}], [("f", {}), ("g", {"b": 2})]),
        ({"name": "f", "arguments": [1]}, None),
        ({"name": "f", "arguments": "not json"}, None),
        ({"name": ""}, None),
        ({"arguments": {}}, None),
        ([], None),
        ([{"name": "f"}, 3], None),
        ("f", None),
    ],
)
def test_calls_from_json(value, expected):
    assert calls_from_json(value) == expected


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<function=get_time>",
    "</function>",
    "[TOOL_CALLS]",
    "[ARGS]",
    "<|python_tag|>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁calls▁end｜>",
    '{"name": "get_time", "arguments": {}}',
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '{"name": "nope"}',
    '{"x": 1}',
    "get_time",
    "```json\n",
    "```",
    "[",
    "]",
    "{",
    "}",
    '"',
    ";",
    " ",
    "\n",
    "text",
    "<",
]


@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(FRAGMENTS), max_size=10),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_marker_soup_is_split_invariant(pieces, cuts):
    text = "".join(pieces)
    assert run(split_at(text, cuts)) == run([text])
    assert run(list(text)) == run([text])
