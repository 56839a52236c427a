"""keep_alive parsing (Go durations, numbers, forever) and Go-style duration rendering."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from power.durations import (
    format_go_duration,
    parse_go_duration,
    parse_keep_alive,
    seconds_to_ns,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2h45m30.5s", 9930.5),
        ("1us", 1e-6),
        ("1µs", 1e-6),
        ("1μs", 1e-6),
        ("10ns", 1e-8),
        (".5s", 0.5),
        ("+5s", 5.0),
        ("0", 0.0),
        ("0s", 0.0),
        (" 5m ", 300.0),
    ],
)
def test_go_duration_strings(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [("10", 10.0), ("1.5", 1.5), ("0", 0.0)])
def test_bare_number_strings_are_seconds(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", [30, 30.5, 0, 0.0])
def test_json_numbers_are_seconds(value):
    assert parse_keep_alive(value) == float(value)


@pytest.mark.parametrize("value", [-1, -1.5, "-1", "-1m", "-5s", "-0.5h"])
def test_negative_means_forever(value):
    assert parse_keep_alive(value) == math.inf


def test_none_is_absent():
    assert parse_keep_alive(None) is None


@pytest.mark.parametrize(
    "value", ["", "abc", "5x", "5 m", "m", "1..5s", "5m-3s", "--5s", True, False, [], {}, "nan"]
)
def test_invalid_values_raise_a_clear_error(value):
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_nan_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        parse_keep_alive(float("nan"))


def test_go_parser_wants_a_unit():
    with pytest.raises(ValueError, match="missing unit"):
        parse_go_duration("10")
    with pytest.raises(ValueError, match="unknown unit"):
        parse_go_duration("10d")
    assert parse_go_duration("-1h") == -3600.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (300, "5m0s"),
        (5400, "1h30m0s"),
        (0.3, "300ms"),
        (0, "0s"),
        (1.5, "1.5s"),
        (3600, "1h0m0s"),
        (2e-6, "2µs"),
        (5e-9, "5ns"),
        (-90, "-1m30s"),
        (math.inf, "-1"),
    ],
)
def test_format_go_duration(seconds, text):
    assert format_go_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_format_then_parse_round_trips(ns):
    seconds = ns / 1e9
    assert parse_go_duration(format_go_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


def test_seconds_to_ns():
    assert seconds_to_ns(1.5) == 1_500_000_000
    assert seconds_to_ns(0) == 0
