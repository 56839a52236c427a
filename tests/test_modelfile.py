"""Modelfile parsing (Ollama's syntax, typed parameters, line-numbered errors) and writing back."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from power.messages import Message
from power.registry.modelfile import (
    Modelfile,
    ModelfileError,
    format_modelfile,
    parse_modelfile,
    quote_value,
)

FULL = '''# a comment
FROM gemma3:270m
  # an indented comment

parameter temperature 0.7
PARAMETER num_ctx 8192
PARAMETER stop "<|im_end|>"
PARAMETER stop <|im_start|>
PARAMETER use_mmap false
Template """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ .Prompt }}"""
SYSTEM You are "Mario" from Super Mario Bros.
ADAPTER ./lora.gguf
LICENSE """MIT License

Copyright"""
LICENSE Apache-2.0
MESSAGE user Is Toronto in Canada?
MESSAGE assistant "yes"   # trailing comment
message SYSTEM   padded
'''


def test_parse_every_command() -> None:
    parsed = parse_modelfile(FULL)
    assert parsed.sources == ["gemma3:270m"]
    assert parsed.from_ == "gemma3:270m"
    assert parsed.parameters == {
        "temperature": 0.7,
        "num_ctx": 8192,
        "stop": ["<|im_end|>", "<|im_start|>"],
        "use_mmap": False,
    }
    assert isinstance(parsed.parameters["temperature"], float)
    assert isinstance(parsed.parameters["num_ctx"], int)
    assert parsed.template == (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
    )
    assert parsed.system == 'You are "Mario" from Super Mario Bros.'
    assert parsed.adapters == ["./lora.gguf"]
    assert parsed.license == ["MIT License\n\nCopyright", "Apache-2.0"]
    assert parsed.messages == [
        Message(role="user", content="Is Toronto in Canada?"),
        Message(role="assistant", content="yes"),
        Message(role="system", content="padded"),
    ]


def test_windows_line_endings_bom_and_quoted_values() -> None:
    text = '\ufeffFROM ./model.gguf\r\nSYSTEM "  spaced  "\r\nTEMPLATE ""\r\n'
    parsed = parse_modelfile(text)
    assert parsed.sources == ["./model.gguf"]
    assert parsed.system == "  spaced  "
    assert parsed.template == ""


def test_quotes_close_only_before_white_space() -> None:
    # the first closing quote followed by white space ends the value, as in Ollama
    with pytest.raises(ModelfileError, match="after the closing quote"):
        parse_modelfile('FROM m\nSYSTEM """say """hi""" twice"""\n')
    assert parse_modelfile('FROM m\nTEMPLATE "a"b"c"\n').template == 'a"b"c'
    parsed = parse_modelfile('FROM m\nSYSTEM """a "quoted" word"""\n')
    assert parsed.system == 'a "quoted" word'


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("FROM m\nBOGUS value\n", 2, "unknown command"),
        ("FROM m\n\n\nPARAMETER nope 1\n", 4, "unknown option"),
        ("FROM m\nPARAMETER temperature hot\n", 2, "must be of type float"),
        ("FROM m\nPARAMETER num_ctx many\n", 2, "int"),
        ("FROM m\nPARAMETER use_mmap maybe\n", 2, "bool"),
        ("FROM m\nMESSAGE tool hi\n", 2, "role"),
        ('FROM m\nSYSTEM """never\nclosed\n', 2, "unterminated"),
        ('FROM m\nSYSTEM "x" trailing\n', 2, "after the closing quote"),
        ("FROM m\nPARAMETER\n", 2, ""),
        ("FROM\n", 1, ""),
    ],
)
def test_errors_carry_the_line_number(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ModelfileError) as info:
        parse_modelfile(text)
    assert info.value.line == line
    assert f"(line {line})" in str(info.value)
    assert fragment in str(info.value)


def test_missing_from() -> None:
    with pytest.raises(ModelfileError, match="no FROM line") as info:
        parse_modelfile("SYSTEM hi\n")
    assert info.value.line is None


def test_format_writes_ollamas_order_and_round_trips() -> None:
    parsed = parse_modelfile(FULL)
    text = format_modelfile(parsed, header="# generated\n\n")
    assert text.startswith('# generated\n\nFROM gemma3:270m\nADAPTER ./lora.gguf\nTEMPLATE """')
    assert "PARAMETER stop <|im_end|>\nPARAMETER stop <|im_start|>\n" in text
    assert "MESSAGE assistant yes\n" in text
    assert parse_modelfile(text) == parsed


@pytest.mark.parametrize(
    ("value", "spelling"),
    [
        ("plain", "plain"),
        ("two words", "two words"),
        ("", '""'),
        (" lead", '" lead"'),
        ("multi\nline", '"""multi\nline"""'),
        ('"starts quoted"', '""starts quoted""'),
        ('has "quote" inside', 'has "quote" inside'),
    ],
)
def test_quote_value(value: str, spelling: str) -> None:
    assert quote_value(value) == spelling


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=40
)


@given(system=_text, template=_text, message=_text, stop=_text)
def test_any_value_round_trips(system: str, template: str, message: str, stop: str) -> None:
    original = Modelfile(
        sources=["model:tag"],
        parameters={"stop": [stop], "temperature": 0.5},
        template=template,
        system=system,
        messages=[Message(role="user", content=message)],
    )
    try:
        text = format_modelfile(original)
    except ValueError:
        assume(False)  # a value no spelling can carry (Ollama cannot write it either)
    assert parse_modelfile(text) == original
