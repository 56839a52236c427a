"""Incremental UTF-8 decoding of token pieces and stop strings spanning tokens."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from power.engine.textstream import StopMatcher, Utf8Accumulator


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool, str]:
    """Feed `pieces`; returns what was emitted per feed, whether it stopped, and the flush."""
    matcher = StopMatcher(stops)
    emitted = []
    stopped = False
    for piece in pieces:
        emit, stopped = matcher.feed(piece)
        emitted.append(emit)
        if stopped:
            break
    return emitted, stopped, matcher.flush()


# ---------------------------------------------------------------- UTF-8


def test_multibyte_characters_split_across_tokens_are_held_back() -> None:
    acc = Utf8Accumulator()
    emoji = "🙂".encode()  # 4 bytes
    cjk = "漢字".encode()  # 3 + 3 bytes
    assert acc.feed(b"hi " + emoji[:1]) == "hi "
    assert acc.pending == emoji[:1]
    assert acc.feed(emoji[1:3]) == ""
    assert acc.feed(emoji[3:] + cjk[:2]) == "🙂"
    assert acc.feed(cjk[2:4]) == "漢"
    assert acc.feed(cjk[4:]) == "字"
    assert acc.flush() == ""


def test_byte_at_a_time() -> None:
    text = "añ€🙂漢"
    acc = Utf8Accumulator()
    out = "".join(acc.feed(bytes([b])) for b in text.encode())
    assert out + acc.flush() == text


def test_invalid_bytes_are_replaced_and_a_dangling_prefix_is_replaced_at_flush() -> None:
    acc = Utf8Accumulator()
    assert acc.feed(b"a\xffb") == "a\ufffdb"
    assert acc.feed(b"\xe6\xbc") == ""  # the start of 漢, never finished
    assert acc.flush() == "\ufffd"
    assert acc.feed(b"ok") == "ok"  # usable after flush


@given(st.text(), st.lists(st.integers(min_value=1, max_value=5), max_size=50))
def test_any_split_gives_back_the_text(text: str, cuts: list[int]) -> None:
    data = text.encode()
    acc = Utf8Accumulator()
    out, at = [], 0
    for cut in cuts:
        out.append(acc.feed(data[at : at + cut]))
        at += cut
    out.append(acc.feed(data[at:]))
    assert "".join(out) + acc.flush() == text


# ---------------------------------------------------------------- stop strings


def test_stop_split_across_three_tokens() -> None:
    emitted, stopped, tail = run(["<|end|>"], ["Hello <|", "en", "d|> ignored"])
    assert stopped
    assert "".join(emitted) == "Hello "
    assert emitted == ["Hello ", "", ""]
    assert tail == ""


def test_prefix_is_held_back_then_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.held == "ST"
    assert matcher.feed("O") == ("", False)
    assert matcher.feed("RM and") == ("STORM and", False)
    assert matcher.feed(" S") == (" ", False)
    assert matcher.flush() == "S"


def test_stop_at_the_very_start() -> None:
    emitted, stopped, tail = run(["###"], ["###", "more"])
    assert stopped and emitted == [""] and tail == ""
    emitted, stopped, _ = run(["\n"], ["\nabc"])
    assert stopped and emitted == [""]


def test_overlapping_stops_the_first_to_complete_wins() -> None:
    matcher = StopMatcher(["abcd", "bc"])
    assert matcher.feed("xa") == ("x", False)
    assert matcher.feed("bc") == ("a", True)
    assert matcher.matched == "bc"
    # complete in the same feed: the one ending first wins, as if fed one character at a time
    emitted, stopped, _ = run(["bcd", "c"], ["abcd"])
    assert stopped and emitted == ["ab"]
    # a stop that is a prefix of another: the shorter one completes first
    emitted, stopped, _ = run(["User:", "User"], ["Hi Us", "er: x"])
    assert stopped and "".join(emitted) == "Hi "


def test_overlapping_prefixes_keep_the_longest_possible_start() -> None:
    # after "xaa" both a's may start "aab": nothing from the first "a" on can be emitted yet.
    matcher = StopMatcher(["aab"])
    assert matcher.feed("xaa") == ("x", False)
    assert matcher.feed("a") == ("a", False)  # "xaaa": only the last two may start "aab"
    assert matcher.feed("b!") == ("", True)  # the text was "xa" + "aab" + "!"


def test_no_stops_pass_everything_and_after_a_stop_nothing() -> None:
    matcher = StopMatcher(["", ""])
    assert matcher.feed("abc") == ("abc", False)
    assert matcher.flush() == ""
    matcher = StopMatcher(["x"])
    assert matcher.feed("axb") == ("a", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_multibyte_stop_split_inside_a_character() -> None:
    acc, matcher = Utf8Accumulator(), StopMatcher(["停止"])
    data = "好停止了".encode()
    out = []
    for i in range(0, len(data), 2):
        emit, stopped = matcher.feed(acc.feed(data[i : i + 2]))
        out.append(emit)
        if stopped:
            break
    assert stopped and "".join(out) == "好"


@given(
    st.text(alphabet="ab\n", max_size=30),
    st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.integers(min_value=1, max_value=4), max_size=30),
)
def test_any_chunking_matches_cutting_the_whole_text(text, stops, cuts) -> None:
    """Whatever the token boundaries, the output is the text before the first stop to
    complete."""
    found = sorted((text.find(s) + len(s), text.find(s)) for s in stops if s in text)
    first = found[0][1] if found else -1
    expected = text if first < 0 else text[:first]
    matcher = StopMatcher(stops)
    out, at, stopped = [], 0, False
    for cut in [*cuts, len(text)]:
        emit, stopped = matcher.feed(text[at : at + cut])
        at += cut
        out.append(emit)
        # never emit anything past the stop, nor a prefix of a stop that may still complete
        assert expected.startswith("".join(out))
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    assert "".join(out) == expected
    assert stopped == (first >= 0)
