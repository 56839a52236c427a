"""Tokenizers of a Hugging Face folder, rewritten as llama.cpp's GGUF vocabulary.

Three kinds, chosen by the caller from the architecture and the files present:

- `wordpiece_vocabulary` (tokenizer model `bert`, llama.cpp's WPM): `vocab.txt` or a WordPiece
  `tokenizer.json`. llama.cpp spells WordPiece tokens with a phantom space: a word-initial token
  `cat` is stored as `▁cat`, a continuation `##s` as `s`, control tokens (`[CLS]`) unchanged.
- `bpe_vocabulary` (tokenizer model `gpt2`): a byte-level BPE `tokenizer.json` (Llama 3, Qwen2…);
  the merges come along through `gguf.SpecialVocab`; the pre-tokenizer name (`llama-bpe`,
  `qwen2`, `gpt-2`) is recognised from the split regex of `pre_tokenizer`.
- `sentencepiece_vocabulary` (tokenizer model `llama`, llama.cpp's SPM): `tokenizer.model` read
  with a small protobuf reader (no `sentencepiece` package needed), or, without that file, a
  SentencePiece-style BPE `tokenizer.json` (`byte_fallback`, `▁` for spaces) whose ids stand in
  for the piece scores (SentencePiece BPE numbers its pieces best-first).

Every kind pads the list to the model's vocabulary size with `[PAD<i>]` tokens of type UNUSED,
as the embedding matrix has that many rows. `write_vocabulary` then adds the special token ids,
add-bos/eos flags, merges and `tokenizer.chat_template` through `gguf.SpecialVocab`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import gguf

from power.convert.source import ConversionError, ModelSource

NORMAL = int(gguf.TokenType.NORMAL)
UNKNOWN = int(gguf.TokenType.UNKNOWN)
CONTROL = int(gguf.TokenType.CONTROL)
USER_DEFINED = int(gguf.TokenType.USER_DEFINED)
UNUSED = int(gguf.TokenType.UNUSED)
BYTE = int(gguf.TokenType.BYTE)

CLS_ID_KEY = "tokenizer.ggml.cls_token_id"
SPM_SPACE = "\u2581"  # ▁, SentencePiece's visible space

# Split regexes of byte-level BPE pre-tokenizers -> llama.cpp's `tokenizer.ggml.pre` names.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_BY_SPLIT = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


@attrs.frozen
class Vocabulary:
    """A GGUF vocabulary: `tokens[i]` is token id i, `token_types[i]` its gguf.TokenType."""

    model: str  # tokenizer.ggml.model: "bert", "gpt2" or "llama"
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None  # None: leave llama.cpp's default
    notes: tuple[str, ...] = ()  # what was guessed, for the caller's progress messages


def looks_special(token: str) -> bool:
    """Whether an added token that is not flagged special still reads as a control token."""
    return (
        token in ("<pad>", "<mask>", "<s>", "</s>", "<unk>")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _pad(
    tokens: dict[int, str], types: dict[int, int], n_vocab: int
) -> tuple[list[str], list[int]]:
    n_vocab = max(n_vocab, max(tokens, default=-1) + 1)
    token_list = [tokens.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    type_list = [types.get(i, UNUSED if i not in tokens else NORMAL) for i in range(n_vocab)]
    return token_list, type_list


def _added_tokens(tokenizer_json: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((tokenizer_json or {}).get("added_tokens") or [])


# ---------------------------------------------------------------- WordPiece (BERT)


def wordpiece_vocabulary(source: ModelSource, n_vocab: int) -> Vocabulary:
    """The WPM vocabulary of a BERT folder (`tokenizer.json` of type WordPiece, or `vocab.txt`)."""
    tokenizer_json = source.read_json("tokenizer.json")
    model = (tokenizer_json or {}).get("model") or {}
    if model.get("type") == "WordPiece":
        by_id = {int(i): token for token, i in model["vocab"].items()}
    elif (source.folder / "vocab.txt").is_file():
        lines = (source.folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        by_id = dict(enumerate(lines))
    else:
        raise ConversionError(
            f"{source.folder} has neither a WordPiece tokenizer.json nor vocab.txt"
        )
    types = dict.fromkeys(by_id, NORMAL)
    control = {t["content"] for t in _added_tokens(tokenizer_json) if t.get("special")}
    if not tokenizer_json:  # vocab.txt alone: the special tokens are named by the config files
        config = source.read_json("tokenizer_config.json") or {}
        control = {v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    for i, token in by_id.items():
        if token in control:
            types[i] = CONTROL
    for token in _added_tokens(tokenizer_json):
        by_id[int(token["id"])] = token["content"]
        types[int(token["id"])] = CONTROL if token.get("special") else USER_DEFINED
    tokens, token_types = _pad(by_id, types, n_vocab)
    phantom = [
        token
        if kind in (CONTROL, UNUSED)
        else token[2:]
        if token.startswith("##")
        else SPM_SPACE + token
        for token, kind in zip(tokens, token_types, strict=True)
    ]
    return Vocabulary(model="bert", pre="default", tokens=phantom, token_types=token_types)


# ---------------------------------------------------------------- byte-level BPE (gpt2)


def _split_patterns(pre_tokenizer: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, node) of every pre-tokenizer, flattening `Sequence`s."""
    if not pre_tokenizer:
        return
    if pre_tokenizer.get("type") == "Sequence":
        for child in pre_tokenizer.get("pretokenizers") or []:
            yield from _split_patterns(child)
    else:
        yield pre_tokenizer.get("type", ""), pre_tokenizer


def bpe_pre_tokenizer_name(tokenizer_json: dict[str, Any], fallback: str) -> tuple[str, str | None]:
    """llama.cpp's pre-tokenizer name for this tokenizer, and a note when it is a guess."""
    regexes = [
        node.get("pattern", {}).get("Regex")
        for kind, node in _split_patterns(tokenizer_json.get("pre_tokenizer"))
        if kind == "Split"
    ]
    for regex in regexes:
        if regex in PRE_TOKENIZER_BY_SPLIT:
            return PRE_TOKENIZER_BY_SPLIT[regex], None
    kinds = [kind for kind, _ in _split_patterns(tokenizer_json.get("pre_tokenizer"))]
    if kinds == ["ByteLevel"]:
        return "gpt-2", None
    return fallback, f"unrecognised pre-tokenizer {regexes or kinds}; using {fallback!r}"


def bpe_vocabulary(source: ModelSource, n_vocab: int, fallback_pre: str) -> Vocabulary:
    """The `gpt2` vocabulary of a byte-level BPE `tokenizer.json`."""
    tokenizer_json = source.read_json("tokenizer.json")
    if not tokenizer_json or (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise ConversionError(f"{source.folder} has no BPE tokenizer.json")
    by_id = {int(i): token for token, i in tokenizer_json["model"]["vocab"].items()}
    types = dict.fromkeys(by_id, NORMAL)
    for token in _added_tokens(tokenizer_json):
        content = token["content"]
        by_id[int(token["id"])] = content
        special = token.get("special") or looks_special(content)
        types[int(token["id"])] = CONTROL if special else USER_DEFINED
    tokens, token_types = _pad(by_id, types, n_vocab)
    pre, note = bpe_pre_tokenizer_name(tokenizer_json, fallback_pre)
    return Vocabulary(
        model="gpt2", pre=pre, tokens=tokens, token_types=token_types, notes=(note,) if note else ()
    )


def is_byte_level_bpe(tokenizer_json: dict[str, Any] | None) -> bool:
    """A BPE tokenizer.json that is byte-level (GPT-2 style) rather than SentencePiece-style."""
    model = (tokenizer_json or {}).get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        return False
    kinds = [kind for kind, _ in _split_patterns((tokenizer_json or {}).get("pre_tokenizer"))]
    return (
        "ByteLevel" in kinds or (tokenizer_json or {}).get("decoder", {}).get("type") == "ByteLevel"
    )


# ---------------------------------------------------------------- SentencePiece (llama)


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def protobuf_fields(buffer: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buffer):
        key, pos = _varint(buffer, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(buffer, pos)
            yield number, value
        elif wire_type == 1:
            yield number, buffer[pos : pos + 8]
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(buffer, pos)
            yield number, buffer[pos : pos + length]
            pos += length
        elif wire_type == 5:
            yield number, buffer[pos : pos + 4]
            pos += 4
        else:
            raise ConversionError(f"tokenizer.model: unsupported protobuf wire type {wire_type}")


@attrs.frozen
class SentencePieceModel:
    """What llama.cpp needs of a SentencePiece `ModelProto`."""

    pieces: list[str]
    scores: list[float]
    types: list[int]  # SentencePiece's piece types equal gguf.TokenType's values
    add_dummy_prefix: bool


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    """Parse `tokenizer.model` (ModelProto: 1 = pieces {1 piece, 2 score, 3 type},
    3 = normalizer_spec {3 add_dummy_prefix})."""
    pieces, scores, types = [], [], []
    add_dummy_prefix = True
    for number, value in protobuf_fields(path.read_bytes()):
        if number == 1 and isinstance(value, bytes):
            piece, score, kind = "", 0.0, NORMAL
            for field, field_value in protobuf_fields(value):
                if field == 1 and isinstance(field_value, bytes):
                    piece = field_value.decode("utf-8")
                elif field == 2 and isinstance(field_value, bytes):
                    (score,) = struct.unpack("<f", field_value)
                elif field == 3 and isinstance(field_value, int):
                    kind = field_value
            pieces.append(piece)
            scores.append(score)
            types.append(kind)
        elif number == 3 and isinstance(value, bytes):
            for field, field_value in protobuf_fields(value):
                if field == 3 and isinstance(field_value, int):
                    add_dummy_prefix = bool(field_value)
    return SentencePieceModel(pieces, scores, types, add_dummy_prefix)


def _sentencepiece_from_tokenizer_json(tokenizer_json: dict[str, Any]) -> SentencePieceModel:
    model = tokenizer_json["model"]
    unk = model.get("unk_token")
    by_id = {int(i): token for token, i in model["vocab"].items()}
    n = max(by_id, default=-1) + 1
    pieces = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = []
    for i, piece in enumerate(pieces):
        if i not in by_id:
            types.append(UNUSED)
        elif piece == unk:
            types.append(UNKNOWN)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    scores = [-float(i) for i in range(n)]  # SentencePiece BPE ids run from best to worst
    return SentencePieceModel(pieces, scores, types, add_dummy_prefix=True)


def sentencepiece_vocabulary(source: ModelSource, n_vocab: int) -> Vocabulary:
    """The SPM (`llama`) vocabulary from `tokenizer.model`, else a SentencePiece-style
    `tokenizer.json`; tokens added in `tokenizer_config.json` override, as llama.cpp expects."""
    tokenizer_json = source.read_json("tokenizer.json")
    if (source.folder / "tokenizer.model").is_file():
        spm = read_sentencepiece_model(source.folder / "tokenizer.model")
    elif tokenizer_json and (tokenizer_json.get("model") or {}).get("type") == "BPE":
        spm = _sentencepiece_from_tokenizer_json(tokenizer_json)
    else:
        raise ConversionError(f"{source.folder} has neither tokenizer.model nor tokenizer.json")
    n_vocab = max(n_vocab, len(spm.pieces))
    tokens = spm.pieces + [f"[PAD{i}]" for i in range(len(spm.pieces), n_vocab)]
    scores = spm.scores + [-10000.0] * (n_vocab - len(spm.pieces))
    types = spm.types + [UNUSED] * (n_vocab - len(spm.pieces))
    added: dict[int, dict[str, Any]] = {int(t["id"]): t for t in _added_tokens(tokenizer_json)}
    config = source.read_json("tokenizer_config.json") or {}
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        added[int(token_id)] = entry
    for token_id, entry in added.items():
        if token_id >= n_vocab:
            continue
        content = entry["content"]
        if entry.get("special") or looks_special(content):
            types[token_id] = CONTROL
        else:
            content = content.replace(SPM_SPACE, " ")  # user-defined tokens are pre-normalised
            types[token_id] = USER_DEFINED
        tokens[token_id] = content
        scores[token_id] = -1000.0
    return Vocabulary(
        model="llama",
        pre="default",
        tokens=tokens[:n_vocab],
        token_types=types[:n_vocab],
        scores=scores[:n_vocab],
        add_space_prefix=None if spm.add_dummy_prefix else False,
    )


# ---------------------------------------------------------------- writing


def _resolve_missing_special_ids(
    source: ModelSource, vocab: Vocabulary, special: gguf.SpecialVocab
) -> None:
    """Special tokens named in tokenizer_config.json that are ordinary vocabulary entries
    (SpecialVocab only looks among added tokens and config.json ids)."""
    config = source.read_json("tokenizer_config.json") or {}
    index: dict[str, int] | None = None
    for kind in special.special_token_types:
        if kind in special.special_token_ids:
            continue
        entry = config.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if not isinstance(content, str):
            continue
        if index is None:
            index = {token: i for i, token in reversed(list(enumerate(vocab.tokens)))}
        if content in index:
            special.special_token_ids[kind] = index[content]


def write_vocabulary(writer: gguf.GGUFWriter, source: ModelSource, vocab: Vocabulary) -> None:
    """Add the tokenizer keys: model, pre, tokens, types (scores), merges, special ids,
    add-bos/eos flags and the chat template."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    special = gguf.SpecialVocab(
        source.folder, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens)
    )
    _resolve_missing_special_ids(source, vocab, special)
    # gguf's writer has no method for the CLS id that llama.cpp reads: write the key itself.
    cls_id = special.special_token_ids.pop("cls", None)
    if cls_id is not None:
        writer.add_uint32(CLS_ID_KEY, cls_id)
    special.add_to_gguf(writer, quiet=True)
