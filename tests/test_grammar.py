"""JSON schema -> GBNF, and llama.cpp's grammar driving SequenceSampler on gemma's vocabulary.

The generation tests drive the loop by hand: random logits -> SequenceSampler.sample ->
accept -> detokenise with llama_token_to_piece, until an end-of-generation token (allowed only
once the grammar is complete); the text must parse and validate against the schema.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from power.engine.grammar import (
    JSON_GBNF,
    GrammarConstraint,
    GrammarError,
    SchemaError,
    gbnf_literal,
    json_schema_to_gbnf,
)
from power.engine.sampling import SequenceSampler, VocabInfo
from power.engine.textstream import Utf8Accumulator
from power.options import Options

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0},
        "height": {"type": "number"},
        "alive": {"type": "boolean"},
        "spouse": {"type": "null"},
        "role": {"enum": ["admin", "user", 3]},
        "kind": {"const": "person"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}

NESTED = {
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
        },
        "shape": {
            "anyOf": [
                {"$ref": "#/$defs/point"},
                {
                    "type": "object",
                    "properties": {
                        "points": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/point"},
                            "minItems": 1,
                            "maxItems": 2,
                        }
                    },
                    "required": ["points"],
                },
            ]
        },
    },
    "type": "object",
    "properties": {
        "shape": {"$ref": "#/$defs/shape"},
        "label": {"type": ["string", "null"], "maxLength": 4},
        "when": {"type": "string", "format": "date"},
        "id": {"oneOf": [{"type": "integer"}, {"type": "string", "format": "uuid"}]},
    },
    "required": ["shape", "id"],
}

ONLY_OPTIONAL = {
    "type": "object",
    "properties": {
        "a": {"type": "boolean"},
        "b": {"type": "integer", "minimum": 0},
        "c": {"definitions_ref": True, "$ref": "#/definitions/flag"},
    },
    "definitions": {"flag": {"enum": [True, False, None]}},
}

EXTRA_KEYS = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": {"type": "boolean"},
}


# ---------------------------------------------------------------- pure conversion


def test_literals_are_escaped() -> None:
    assert gbnf_literal('a"b\\c\n\t') == '"a\\"b\\\\c\\n\\t"'
    assert gbnf_literal("\x01é") == '"\\x01é"'


def test_schema_rules_are_named_and_complete() -> None:
    grammar = json_schema_to_gbnf(PERSON)
    names = {line.split(" ::= ")[0] for line in grammar.splitlines()}
    assert "root" in names and "space" in names and "integral-part" in names
    for line in grammar.splitlines():
        body = line.split(" ::= ", 1)[1]
        body = re.sub(r'"(\\.|[^"\\])*"', " ", body)  # string literals
        body = re.sub(r"\[(\\.|[^\]\\])*\]", " ", body)  # character classes
        assert set(re.findall(r"[a-zA-Z][a-zA-Z0-9-]*", body)) <= names, line


def test_unsupported_schemas_raise() -> None:
    with pytest.raises(SchemaError):
        json_schema_to_gbnf({"$ref": "https://example.com/schema"})
    with pytest.raises(SchemaError):
        json_schema_to_gbnf({"type": "bogus"})
    with pytest.raises(SchemaError):
        json_schema_to_gbnf({"type": "array", "minItems": 3, "maxItems": 1})


# ---------------------------------------------------------------- with llama.cpp


@pytest.fixture(scope="module")
def gemma_vocab(gemma_gguf: Path) -> Iterator[tuple[object, VocabInfo]]:
    """gemma-3-270m's vocabulary only (no weights): `(llama_vocab *, VocabInfo)`."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gemma_gguf).encode(), params)
    assert model
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    info = VocabInfo(
        n_vocab=n_vocab,
        newline_ids=[llama_cpp.llama_vocab_nl(vocab)],
        eog_ids=[t for t in range(1024) if llama_cpp.llama_vocab_is_eog(vocab, t)],
    )
    yield vocab, info
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="module")
def closing_boost(gemma_vocab) -> np.ndarray:
    """+8 on every token made only of quotes, closing brackets, colons and spaces, so that
    random rows close strings and containers within a few dozen tokens."""
    vocab, info = gemma_vocab
    boost = np.zeros(info.n_vocab, dtype=np.float32)
    for token in range(info.n_vocab):
        text = piece(vocab, token)
        if text and not text.strip(b'"}]: '):
            boost[token] = 8.0
    return boost


def piece(vocab: object, token: int) -> bytes:
    import llama_cpp

    buffer = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    assert n >= 0
    return buffer.raw[:n]


def generate(
    vocab: object,
    info: VocabInfo,
    grammar: str,
    seed: int,
    boost: np.ndarray,
    options: dict | None = None,
    max_tokens: int = 400,
) -> str:
    """Sample under `grammar` from random logits (+ `boost`) until an end-of-generation token."""
    import llama_cpp

    rng = np.random.default_rng(seed)
    sampler = SequenceSampler(
        Options().updated({"seed": seed, **(options or {})}),
        info,
        grammar=GrammarConstraint(vocab, grammar),
    )
    text = Utf8Accumulator()
    out = []
    try:
        for _ in range(max_tokens):
            logits = (rng.normal(0.0, 5.0, info.n_vocab) + boost).astype(np.float32)
            token = sampler.sample(logits)
            sampler.accept(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return "".join(out) + text.flush()
            out.append(text.feed(piece(vocab, token)))
    finally:
        sampler.close()
    raise AssertionError(f"no end of generation after {max_tokens} tokens: {''.join(out)!r}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "schema",
    [PERSON, NESTED, ONLY_OPTIONAL, EXTRA_KEYS],
    ids=["person", "nested", "only-optional", "extra-keys"],
)
def test_random_logits_under_a_schema_give_valid_json(gemma_vocab, closing_boost, schema) -> None:
    vocab, info = gemma_vocab
    grammar = json_schema_to_gbnf(schema)
    for seed in range(2):
        text = generate(vocab, info, grammar, seed, closing_boost)
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{}, {"temperature": 0}, {"mirostat": 2, "top_k": 0}, {"top_k": 0, "typical_p": 0.9}],
    ids=["default", "greedy", "mirostat2", "typical"],
)
def test_json_format_grammar_gives_an_object(gemma_vocab, closing_boost, options) -> None:
    vocab, info = gemma_vocab
    text = generate(vocab, info, JSON_GBNF, 11, closing_boost, options)
    assert isinstance(json.loads(text), dict)


@pytest.mark.slow
def test_end_of_generation_only_once_complete(gemma_vocab) -> None:
    vocab, info = gemma_vocab
    constraint = GrammarConstraint(vocab, 'root ::= "ok"')
    try:
        eog = np.array(info.eog_ids)
        assert not constraint.allowed(eog).any()
        ok = [t for t in range(info.n_vocab) if piece(vocab, t) == b"ok"][0]
        assert constraint.allowed(np.array([ok]))[0]
        constraint.accept(ok)
        assert constraint.allowed(eog).all()
        assert not constraint.allowed(np.array([ok]))[0]
    finally:
        constraint.close()
        constraint.close()


@pytest.mark.slow
def test_bad_grammar_and_forbidden_token_raise(gemma_vocab) -> None:
    vocab, _ = gemma_vocab
    with pytest.raises(GrammarError):
        GrammarConstraint(vocab, "root ::= undefined-rule")
    constraint = GrammarConstraint(vocab, JSON_GBNF)
    try:
        brace = [t for t in range(1000) if piece(vocab, t) == b"{"][0]
        letter = [t for t in range(1000) if piece(vocab, t) == b"a"][0]
        with pytest.raises(GrammarError):
            constraint.accept(letter)
        constraint.accept(brace)  # the constraint is still usable
    finally:
        constraint.close()


@pytest.mark.slow
def test_every_converted_schema_parses_in_llama_cpp(gemma_vocab) -> None:
    vocab, _ = gemma_vocab
    schemas = [
        PERSON,
        NESTED,
        ONLY_OPTIONAL,
        EXTRA_KEYS,
        True,
        {},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
        {"type": "array", "items": {"type": "integer"}, "minItems": 2},
        {"type": "string", "format": "date-time"},
        {"allOf": [{"$ref": "#/$defs/a"}, {"properties": {"b": {}}}], "$defs": {"a": {}}},
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
                }
            },
            "$ref": "#/$defs/node",
        },
    ]
    for schema in schemas:
        GrammarConstraint(vocab, json_schema_to_gbnf(schema)).close()
