"""Model names: Ollama's defaults, display forms, character rules, and no way out of the store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from power.registry.names import InvalidNameError, ModelName


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("gemma3", ("registry.ollama.ai", "library", "gemma3", "latest"), "gemma3:latest"),
        ("gemma3:270m", ("registry.ollama.ai", "library", "gemma3", "270m"), "gemma3:270m"),
        ("user/model", ("registry.ollama.ai", "user", "model", "latest"), "user/model:latest"),
        (
            "host:5000/ns/m:tag",
            ("host:5000", "ns", "m", "tag"),
            "host:5000/ns/m:tag",
        ),
        (
            "127.0.0.1:5000/ns/m",
            ("127.0.0.1:5000", "ns", "m", "latest"),
            "127.0.0.1:5000/ns/m:latest",
        ),
        (
            "registry.ollama.ai/library/qwen2.5-coder:0.5b",
            ("registry.ollama.ai", "library", "qwen2.5-coder", "0.5b"),
            "qwen2.5-coder:0.5b",
        ),
        (
            "Registry.Ollama.AI/Library/Mixed_Case:Q4_K_M",
            ("Registry.Ollama.AI", "Library", "Mixed_Case", "Q4_K_M"),
            "Mixed_Case:Q4_K_M",
        ),
        ("_under/_score:_x", ("registry.ollama.ai", "_under", "_score", "_x"), "_under/_score:_x"),
    ],
)
def test_parse_defaults_and_display(text: str, parts: tuple[str, ...], display: str) -> None:
    name = ModelName.parse(text)
    assert name.path_parts() == parts
    assert name.display == display
    assert str(name) == f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}"
    assert ModelName.parse(str(name)) == name


def test_scheme_is_kept_but_not_part_of_identity() -> None:
    plain = ModelName.parse("127.0.0.1:5000/ns/m:t")
    insecure = ModelName.parse("http://127.0.0.1:5000/ns/m:t")
    assert insecure.scheme == "http"
    assert plain.scheme == "https"
    assert insecure == plain
    assert insecure.path_parts() == ("127.0.0.1:5000", "ns", "m", "t")


def test_key_is_case_insensitive() -> None:
    a = ModelName.parse("Gemma3:270M")
    b = ModelName.parse("registry.ollama.ai/library/gemma3:270m")
    assert a != b
    assert a.key == b.key == "registry.ollama.ai/library/gemma3:270m"
    assert a.same_model(b)


def test_length_limits() -> None:
    assert ModelName.parse("m" * 80).model == "m" * 80
    assert ModelName.parse("n" * 80 + "/m").namespace == "n" * 80
    assert ModelName.parse("m:" + "t" * 80).tag == "t" * 80
    assert ModelName.parse("h" * 350 + "/n/m").host == "h" * 350
    for text in ("m" * 81, "n" * 81 + "/m", "m:" + "t" * 81, "h" * 351 + "/n/m"):
        with pytest.raises(InvalidNameError, match="longer than"):
            ModelName.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a/b/c/d",
        "../x",
        "x/../y",
        "./x",
        "..",
        "/etc/passwd",
        "/abs/path:tag",
        "a\\b",
        "..\\..\\x",
        "a\x00b",
        "model:",
        ":tag",
        ".hidden",
        "-dash",
        "x:..",
        "x:.hidden",
        "a b",
        "ns.dot/model",
        "host/ns/",
        "/ns/model",
        "ftp://host/ns/m",
        "m@sha256:abc",
        "x:t/../..",
        "mo:del:tag",
        "émoji",
    ],
)
def test_invalid_names_are_refused_with_a_clear_message(text: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        ModelName.parse(text)
    assert "invalid model name" in str(info.value)


def test_message_says_which_part_is_wrong() -> None:
    with pytest.raises(InvalidNameError, match="namespace"):
        ModelName.parse("ns.dot/model")
    with pytest.raises(InvalidNameError, match="tag"):
        ModelName.parse("model:bad/tag:x")


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidNameError):
        ModelName("registry.ollama.ai", "library", "..", "latest")
    with pytest.raises(InvalidNameError):
        ModelName.from_path_parts(("h", "n", "m"))
    assert ModelName.from_path_parts(("h", "n", "m", "t")).display == "h/n/m:t"


@given(st.text(max_size=60))
def test_no_parsed_name_can_escape_the_store(text: str) -> None:
    try:
        name = ModelName.parse(text)
    except InvalidNameError:
        return
    for part in name.path_parts():
        assert part not in ("", ".", "..")
        assert not part.startswith(".")
        assert "/" not in part and "\\" not in part and "\x00" not in part
    assert ModelName.parse(str(name)) == name
