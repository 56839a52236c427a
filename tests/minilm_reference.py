"""An independent reference for all-MiniLM-L6-v2 sentence embeddings: numpy only.

It reads the same `model.safetensors` and `vocab.txt` as the converter but shares no code with
it: its own safetensors reader, BERT's basic tokenizer + WordPiece (as `BertTokenizer` does it,
lower-casing and stripping accents), and a float64 forward pass of the encoder (embeddings,
post-norm self-attention layers with exact GELU), then mean pooling and L2 normalisation, as the
sentence-transformers pipeline (Transformer -> Pooling(mean) -> Normalize) defines it.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
from pathlib import Path

import numpy as np


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every F32 tensor of a safetensors file, as float64 arrays."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            continue
        begin, end = info["data_offsets"]
        data = np.frombuffer(
            raw, dtype="<f4", count=(end - begin) // 4, offset=8 + header_len + begin
        )
        tensors[name] = data.reshape(info["shape"]).astype(np.float64)
    return tensors


# ---------------------------------------------------------------- tokenizer


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_tokenize(text: str) -> list[str]:
    """BERT's basic tokenizer: clean, space out CJK, lower-case, strip accents, split punctuation."""
    cleaned = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD:
            continue
        if char in " \t\n\r" or unicodedata.category(char) == "Zs":
            cleaned.append(" ")
        elif unicodedata.category(char).startswith("C"):
            continue
        elif _is_cjk(cp):
            cleaned.append(f" {char} ")
        else:
            cleaned.append(char)
    words = []
    for word in "".join(cleaned).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        current = ""
        for char in word:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


def wordpiece(word: str, vocab: dict[str, int], unk: str = "[UNK]") -> list[str]:
    """Greedy longest-match-first WordPiece of one word (all of it [UNK] if a piece is missing)."""
    if len(word) > 100:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                break
            end -= 1
        else:
            return [unk]
        start = end
    return pieces


class MiniLMReference:
    """all-MiniLM-L6-v2 (any BERT sentence-transformers folder with mean pooling), in numpy."""

    def __init__(self, folder: Path) -> None:
        self.config = json.loads((folder / "config.json").read_text())
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        self.vocab = {token: i for i, token in enumerate(lines)}
        self.weights = load_safetensors(folder / "model.safetensors")

    def tokenize(self, text: str) -> list[int]:
        """[CLS] wordpieces [SEP] as ids."""
        pieces = ["[CLS]"]
        for word in basic_tokenize(text):
            pieces.extend(wordpiece(word, self.vocab))
        pieces.append("[SEP]")
        return [self.vocab[p] for p in pieces]

    def _layer_norm(self, x: np.ndarray, prefix: str) -> np.ndarray:
        eps = self.config["layer_norm_eps"]
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        w, b = self.weights[prefix + ".weight"], self.weights[prefix + ".bias"]
        return (x - mean) / np.sqrt(var + eps) * w + b

    def _linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.weights[prefix + ".weight"].T + self.weights[prefix + ".bias"]

    def token_states(self, ids: list[int]) -> np.ndarray:
        """The last layer's hidden state of every token."""
        w = self.weights
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._layer_norm(x, "embeddings.LayerNorm")
        n_head = self.config["num_attention_heads"]
        head_dim = self.config["hidden_size"] // n_head
        erf = np.vectorize(math.erf)
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q = self._linear(x, p + ".attention.self.query").reshape(n, n_head, head_dim)
            k = self._linear(x, p + ".attention.self.key").reshape(n, n_head, head_dim)
            v = self._linear(x, p + ".attention.self.value").reshape(n, n_head, head_dim)
            scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = np.einsum("hqk,khd->qhd", scores, v).reshape(n, n_head * head_dim)
            x = self._layer_norm(
                x + self._linear(context, p + ".attention.output.dense"),
                p + ".attention.output.LayerNorm",
            )
            h = self._linear(x, p + ".intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = self._layer_norm(x + self._linear(h, p + ".output.dense"), p + ".output.LayerNorm")
        return x

    def embed(self, text: str) -> np.ndarray:
        """The sentence embedding: mean over tokens, L2-normalised (float64)."""
        pooled = self.token_states(self.tokenize(text)).mean(0)
        return pooled / np.linalg.norm(pooled)
