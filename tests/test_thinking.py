"""ThinkingParser on realistic reasoning-model outputs, split every possible way."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from power.prompt.thinking import ThinkingParser, ThinkingState, suffix_overlap

DEEPSEEK_R1 = (
    "<think>\nOkay, the user asks for the capital of France. That's Paris.\n"
    "Let me double-check: yes, Paris has been the capital since 987.\n</think>\n\n"
    "The capital of France is **Paris**."
)
QWEN3 = (
    "<think>\nThe user wants 2+2. Simple arithmetic: 2+2=4. "
    "Should I mention <b>tags</b>? No.\n</think>\n\nThe answer is 4."
)
QWEN3_NO_THINK = "<think>\n\n</think>\n\nHello! How can I help you today?"
# DeepSeek-R1 templates end the prompt with "<think>\n": the output starts inside the block.
R1_OPENED_IN_PROMPT = "First, recall geography.\nParis is right.\n</think>\n\nParis."
PLAIN = "  Just an answer, with a < sign and </think-ish text."


def run(parser: ThinkingParser, chunks: list[str]) -> tuple[str, str]:
    thinking, content = [], []
    for chunk in chunks:
        t, c = parser.feed(chunk)
        thinking.append(t)
        content.append(c)
    t, c = parser.finish()
    return "".join(thinking) + t, "".join(content) + c


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *cuts})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


CASES = [
    (
        DEEPSEEK_R1,
        {},
        (
            "Okay, the user asks for the capital of France. That's Paris.\n"
            "Let me double-check: yes, Paris has been the capital since 987.",
            "The capital of France is **Paris**.",
        ),
    ),
    (
        QWEN3,
        {},
        (
            "The user wants 2+2. Simple arithmetic: 2+2=4. Should I mention <b>tags</b>? No.",
            "The answer is 4.",
        ),
    ),
    (QWEN3_NO_THINK, {}, ("", "Hello! How can I help you today?")),
    (
        R1_OPENED_IN_PROMPT,
        {"starts_in_thinking": True},
        ("First, recall geography.\nParis is right.", "Paris."),
    ),
    (PLAIN, {}, ("", PLAIN)),
    ("<think>\nstill thinking when cut off", {}, ("still thinking when cut off", "")),
    ("<think>unfinished <", {}, ("unfinished <", "")),
    ("<think>a</think>", {}, ("a", "")),
    ("", {}, ("", "")),
    ("   ", {}, ("", "   ")),
    ("<thi", {}, ("", "<thi")),
    ("<think>x</think>  then </think> again", {}, ("x", "then </think> again")),
    # A model that repeats the open tag although the prompt opened the block.
    ("<think>\nreasoning</think>answer", {"starts_in_thinking": True}, ("reasoning", "answer")),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), CASES)
def test_one_chunk(text, kwargs, expected):
    assert run(ThinkingParser(**kwargs), [text]) == expected


@pytest.mark.parametrize(("text", "kwargs", "expected"), CASES)
def test_every_two_way_split(text, kwargs, expected):
    for cut in range(len(text) + 1):
        assert run(ThinkingParser(**kwargs), [text[:cut], text[cut:]]) == expected, cut


@pytest.mark.parametrize(("text", "kwargs", "expected"), CASES)
def test_character_by_character(text, kwargs, expected):
    assert run(ThinkingParser(**kwargs), list(text)) == expected


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from(CASES),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_any_split_gives_the_one_chunk_result(case, cuts):
    text, kwargs, expected = case
    assert run(ThinkingParser(**kwargs), split_at(text, cuts)) == expected


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="<>/thinkab \n", max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    starts=st.booleans(),
)
def test_arbitrary_text_is_split_invariant_and_loses_nothing_but_tags(text, cuts, starts):
    whole = run(ThinkingParser(starts_in_thinking=starts), [text])
    assert run(ThinkingParser(starts_in_thinking=starts), split_at(text, cuts)) == whole
    thinking, content = whole
    letters = [c for c in text if not c.isspace()]
    kept = [c for c in thinking + content if not c.isspace()]
    assert len(kept) <= len(letters)


def test_thinking_streams_before_the_close_tag():
    parser = ThinkingParser()
    assert parser.feed("<think>\nStep one") == ("Step one", "")
    assert parser.feed(" and two.\n</th") == (" and two.", "")
    assert parser.feed("ink>\n\nDone") == ("", "Done")
    assert parser.state is ThinkingState.CONTENT


def test_content_passes_through_without_a_think_tag():
    parser = ThinkingParser()
    assert parser.feed("Hello") == ("", "Hello")
    assert parser.feed(" <think>not reasoning</think>") == ("", " <think>not reasoning</think>")


def test_leading_whitespace_is_held_until_decided():
    parser = ThinkingParser()
    assert parser.feed("\n\n") == ("", "")
    assert parser.feed("Hi") == ("", "\n\nHi")


def test_custom_tags():
    parser = ThinkingParser(open_tag="[THINK]", close_tag="[/THINK]")
    assert run(parser, ["[THINK]hmm[/THI", "NK]ok"]) == ("hmm", "ok")


def test_harmony_channels():
    text = (
        "<|channel|>analysis<|message|>User greets. Reply politely.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello there!"
    )
    expected = ("User greets. Reply politely.", "Hello there!")
    for cut in range(len(text) + 1):
        assert run(ThinkingParser.harmony(), [text[:cut], text[cut:]]) == expected


def test_empty_tags_are_refused():
    with pytest.raises(ValueError):
        ThinkingParser(open_tag="")


def test_suffix_overlap():
    assert suffix_overlap("abc</th", "</think>") == 4
    assert suffix_overlap("abc", "</think>") == 0
    assert suffix_overlap("</think>", "</think>") == 0  # a whole tag is not a partial one
