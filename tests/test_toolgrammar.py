"""tool_choice grammars: each format's calls are what the tool-call parser reads, and
llama.cpp's grammar sampler (on Qwen2.5-Coder's vocabulary) accepts exactly the forced calls,
special tokens included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from power.engine.grammar import GrammarConstraint, GrammarError, json_schema_to_gbnf
from power.messages import Tool, ToolChoice, ToolChoiceMode, ToolFunction
from power.prompt.toolcalls import ToolCallParser
from power.prompt.toolgrammar import (
    BARE_JSON,
    DEEPSEEK,
    FUNCTION_TAG,
    HERMES,
    LLAMA_JSON,
    MISTRAL_ARGS,
    MISTRAL_LIST,
    QWEN3_CODER,
    CallFormat,
    arguments_schema,
    call_format,
    prefixed_rules,
    text_without,
    tool_call_grammar,
)

WEATHER = Tool(
    ToolFunction(
        "get_weather",
        "Get the weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    )
)
TIME = Tool(ToolFunction("get_time", "Get the time", {}))
TOOLS = [WEATHER, TIME]
REQUIRED = ToolChoice(ToolChoiceMode.REQUIRED)
SINGLE = ToolChoice(ToolChoiceMode.REQUIRED, parallel=False)
NAMED = ToolChoice(ToolChoiceMode.TOOL, name="get_weather")

#: a chat template excerpt that selects each format
HINTS = {
    HERMES: "<tool_call>\n{...}\n</tool_call>",
    QWEN3_CODER: "<tool_call>\n<function=name>\n<parameter=x>",
    FUNCTION_TAG: "<function=example_function_name>{...}</function>",
    MISTRAL_LIST: "[AVAILABLE_TOOLS] ... [TOOL_CALLS]",
    MISTRAL_ARGS: "[TOOL_CALLS]' + name + '[ARGS]' + arguments",
    DEEPSEEK: "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>",
    LLAMA_JSON: "<|python_tag|>",
    BARE_JSON: "{{ .Tools }}",
}


def render_calls(fmt: CallFormat, calls: list[tuple[str, dict]]) -> str:
    """Calls written as the format writes them (the text a forced model produces)."""
    body = fmt.separator.join(
        fmt.call_prefix(name) + json.dumps(arguments) + fmt.after for name, arguments in calls
    )
    return fmt.open + body + fmt.close


def parse(text: str, hint: str) -> tuple[str, list[tuple[str, dict]]]:
    parser = ToolCallParser([t.function.name for t in TOOLS], hint)
    content, calls = parser.feed(text)
    more, more_calls = parser.finish()
    return content + more, [(c.function.name, c.function.arguments) for c in calls + more_calls]


@pytest.mark.parametrize("fmt", list(HINTS), ids=lambda f: f.kind)
def test_each_format_is_chosen_by_its_template(fmt: CallFormat) -> None:
    assert call_format(HINTS[fmt]) is fmt
    assert call_format(None) is BARE_JSON


@pytest.mark.parametrize("fmt", list(HINTS), ids=lambda f: f.kind)
def test_the_parser_reads_what_each_format_writes(fmt: CallFormat) -> None:
    calls = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})]
    assert parse(render_calls(fmt, calls), HINTS[fmt]) == ("", calls)
    assert parse(render_calls(fmt, calls[:1]), HINTS[fmt]) == ("", calls[:1])


def test_rules_are_prefixed_where_defined_and_used() -> None:
    grammar = 'root ::= item ( "," item )*\nitem ::= "item" [a-z] space {0,2}\nspace ::= " "?\n'
    assert prefixed_rules(grammar, "t0-") == [
        't0-root ::= t0-item ( "," t0-item )*',
        't0-item ::= "item" [a-z] t0-space {0,2}',
        't0-space ::= " "?',
    ]
    with pytest.raises(ValueError):
        prefixed_rules("not a rule\n", "x-")


def test_text_without_a_tag() -> None:
    assert text_without("</a>") == '( [^<] | "<" ( [^/] | "/" ( [^a] | "a" [^>] ) ) )*'


def test_arguments_schema() -> None:
    assert arguments_schema({}) == {"type": "object", "additionalProperties": True}
    assert arguments_schema(None) == {"type": "object", "additionalProperties": True}
    declared = {"properties": {"a": {"type": "string"}}}
    assert arguments_schema(declared) == {"type": "object", **declared}
    assert arguments_schema({"type": "string"})["type"] == "object"
    assert arguments_schema({"anyOf": [{"type": "object"}]}) == {"anyOf": [{"type": "object"}]}


def test_choices_that_force_nothing_or_cannot_be_kept() -> None:
    for mode in (ToolChoiceMode.AUTO, ToolChoiceMode.NONE):
        assert tool_call_grammar(TOOLS, ToolChoice(mode), None, json_schema_to_gbnf) is None
    with pytest.raises(ValueError, match="not among the tools"):
        tool_call_grammar(
            TOOLS, ToolChoice(ToolChoiceMode.TOOL, name="x"), None, json_schema_to_gbnf
        )
    with pytest.raises(ValueError, match="no tools"):
        tool_call_grammar([], REQUIRED, None, json_schema_to_gbnf)


def test_a_schema_the_converter_refuses_allows_any_object() -> None:
    odd = Tool(ToolFunction("odd", "", {"type": "object", "properties": {"x": False}}))
    grammar = tool_call_grammar([odd], REQUIRED, HINTS[HERMES], json_schema_to_gbnf)
    assert "tool0-value" in grammar  # the free-form object's rules


# ---------------------------------------------------------------- llama.cpp, Qwen's vocabulary


@pytest.fixture(scope="module")
def qwen_vocab(qwen_gguf: Path) -> Iterator[object]:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(qwen_gguf).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def tokenize(vocab, text: str) -> list[int]:
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 16))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, True)
    assert n >= 0
    return list(buf[:n])


def accepts(vocab, grammar: str, text: str) -> bool:
    """Whether the grammar takes `text` (as the vocabulary tokenizes it) and is then complete
    (an end-of-generation token allowed)."""
    constraint = GrammarConstraint(vocab, grammar)
    try:
        for token in tokenize(vocab, text):
            constraint.accept(token)
        eog = llama_cpp.llama_vocab_eos(vocab)
        return bool(constraint.allowed(np.array([eog]))[0])
    except GrammarError:
        return False
    finally:
        constraint.close()


QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_qwen_special_tokens_meet_the_grammar_literal(qwen_vocab) -> None:
    tool_call, end = tokenize(qwen_vocab, "<tool_call></tool_call>")
    assert tokenize(qwen_vocab, QWEN_CALL)[0] == tool_call  # one special token each
    grammar = tool_call_grammar(TOOLS, REQUIRED, HINTS[HERMES], json_schema_to_gbnf)
    constraint = GrammarConstraint(qwen_vocab, grammar)
    first = constraint.allowed(np.arange(llama_cpp.llama_vocab_n_tokens(qwen_vocab)))
    assert first[tool_call]  # the special token is a way in
    prose = tokenize(qwen_vocab, "Sure")[0]
    assert not first[prose] and not first[llama_cpp.llama_vocab_eos(qwen_vocab)]
    constraint.close()


@pytest.mark.parametrize(
    ("choice", "text", "ok"),
    [
        (REQUIRED, QWEN_CALL, True),
        (REQUIRED, QWEN_CALL + "\n" + QWEN_CALL, True),
        (SINGLE, QWEN_CALL + "\n" + QWEN_CALL, False),
        (REQUIRED, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', True),
        (
            REQUIRED,
            '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>',
            True,
        ),
        (NAMED, QWEN_CALL, True),
        (NAMED, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', False),
        (NAMED, QWEN_CALL.replace('"Paris"}', '"Paris", "days": 3}'), True),
        (NAMED, QWEN_CALL.replace('"Paris"}', '"Paris", "hour": 3}'), False),  # undeclared
        (NAMED, QWEN_CALL.replace('{"city": "Paris"}', "{}"), False),  # city is required
        (NAMED, QWEN_CALL.replace('"Paris"', "7"), False),  # city is a string
        (REQUIRED, "The weather in Paris is sunny.", False),
        (REQUIRED, QWEN_CALL[:-3], False),  # incomplete: no end of generation yet
    ],
)
def test_the_qwen_grammar_accepts_only_forced_calls(qwen_vocab, choice, text, ok) -> None:
    grammar = tool_call_grammar(TOOLS, choice, HINTS[HERMES], json_schema_to_gbnf)
    assert accepts(qwen_vocab, grammar, text) is ok


def test_thinking_may_come_first(qwen_vocab) -> None:
    thought = "<think>\nThe user wants <b>weather</b> for Paris.\n</think>\n\n"
    optional = tool_call_grammar(
        TOOLS, NAMED, HINTS[HERMES], json_schema_to_gbnf, thinking="optional"
    )
    assert accepts(qwen_vocab, optional, thought + QWEN_CALL)
    assert accepts(qwen_vocab, optional, QWEN_CALL)
    assert not accepts(qwen_vocab, optional, "<think>\nno end" + QWEN_CALL)
    opened = tool_call_grammar(TOOLS, NAMED, HINTS[HERMES], json_schema_to_gbnf, thinking="open")
    assert accepts(qwen_vocab, opened, "Paris, then.\n</think>\n" + QWEN_CALL)
    assert not accepts(qwen_vocab, opened, QWEN_CALL)


@pytest.mark.parametrize("fmt", list(HINTS), ids=lambda f: f.kind)
def test_every_format_grammar_takes_its_own_calls(qwen_vocab, fmt: CallFormat) -> None:
    calls = [("get_weather", {"city": "Paris"}), ("get_time", {})]
    grammar = tool_call_grammar(TOOLS, REQUIRED, HINTS[fmt], json_schema_to_gbnf)
    assert accepts(qwen_vocab, grammar, render_calls(fmt, calls))
    assert accepts(qwen_vocab, grammar, render_calls(fmt, calls[:1]))
    assert not accepts(qwen_vocab, grammar, "It is sunny.")
