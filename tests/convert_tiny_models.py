"""Tiny Hugging Face model folders for converter tests, and a numpy reference of their logits.

Each builder writes a complete folder (config.json, safetensors weights with random values,
tokenizer files, tokenizer_config.json with a chat template) small enough to convert and run in
well under a second. The weights are written by a small safetensors writer of our own so that
bfloat16 checkpoints can be produced without torch.

`reference_logits` is an independent float64 forward pass of the Hugging Face definitions
(Llama/Qwen2: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU; Gemma 3: scaled
embeddings, `(1 + w)` norms, q/k norms, sandwich norms, GELU-tanh, local RoPE base on sliding
layers), reading the same safetensors file: it checks that the converter's tensor rewrites
(q/k permutation, norm offsets) keep the model's function.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------- safetensors writing


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
    return (rounded >> 16).astype("<u2")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Write float tensors as `dtype` ("F32", "F16" or "BF16")."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, values in tensors.items():
        if dtype == "BF16":
            blob = _bf16_bits(values).tobytes()
        else:
            blob = values.astype("<f4" if dtype == "F32" else "<f2").tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(values.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor as float64 (F32, F16, BF16)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        chunk = raw[8 + header_len + begin : 8 + header_len + end]
        if info["dtype"] == "BF16":
            values = (np.frombuffer(chunk, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(chunk, {"F32": "<f4", "F16": "<f2"}[info["dtype"]])
        out[name] = values.reshape(info["shape"]).astype(np.float64)
    return out


# ---------------------------------------------------------------- tokenizers


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BPE_MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "c"),
    ("a", "t"),
    ("Ġc", "at"),
    ("i", "n"),
]


def byte_level_tokenizer(split_regex: str, specials: list[str]) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json: 256 byte tokens, a few merges, then `specials`."""
    vocab = {char: i for i, char in enumerate(_gpt2_byte_chars())}
    for left, right in BPE_MERGES:
        vocab[left + right] = len(vocab)
    added = [
        {
            "id": len(vocab) + i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, s in enumerate(specials)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": split_regex},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[left, right] for left, right in BPE_MERGES],
        },
    }


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    key = _varint(number << 3 | wire_type)
    if wire_type == 0:
        assert isinstance(payload, int)
        return key + _varint(payload)
    assert isinstance(payload, bytes)
    return key + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def sentencepiece_model(pieces: list[tuple[str, float, int]], add_dummy_prefix: bool) -> bytes:
    """A SentencePiece ModelProto with `pieces` (text, score, type) and a normalizer spec."""
    body = b""
    for text, score, kind in pieces:
        piece = (
            _field(1, 2, text.encode())
            + _field(2, 5, struct.pack("<f", score))
            + _field(3, 0, kind)
        )
        body += _field(1, 2, piece)
    normalizer = _field(1, 2, b"identity") + _field(3, 0, int(add_dummy_prefix))
    return body + _field(3, 2, normalizer)


GEMMA_WORDS = ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "he", "at", "th"]


def gemma_pieces() -> list[tuple[str, float, int]]:
    pieces = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    pieces += [(w, -float(i), 1) for i, w in enumerate(GEMMA_WORDS)]
    pieces += [(c, -100.0 - i, 1) for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz")]
    return pieces


# ---------------------------------------------------------------- folders

HIDDEN, N_HEAD, N_HEAD_KV, HEAD_DIM, FFN, N_LAYER = 64, 4, 2, 16, 128, 2


def _decoder_tensors(rng: np.random.Generator, n_vocab: int, kind: str) -> dict[str, np.ndarray]:
    def normal(*shape: int, scale: float = 0.15) -> np.ndarray:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    n_q, n_kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    tensors = {"model.embed_tokens.weight": normal(n_vocab, HIDDEN, scale=1.0)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = 1.0 + normal(HIDDEN, scale=0.1)
        tensors[p + "self_attn.q_proj.weight"] = normal(n_q, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = normal(n_kv, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = normal(n_kv, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = normal(HIDDEN, n_q)
        tensors[p + "post_attention_layernorm.weight"] = 1.0 + normal(HIDDEN, scale=0.1)
        tensors[p + "mlp.gate_proj.weight"] = normal(FFN, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = normal(FFN, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = normal(HIDDEN, FFN)
        if kind == "qwen2":
            tensors[p + "self_attn.q_proj.bias"] = normal(n_q)
            tensors[p + "self_attn.k_proj.bias"] = normal(n_kv)
            tensors[p + "self_attn.v_proj.bias"] = normal(n_kv)
        if kind == "gemma3":  # stored as offsets from 1
            tensors[p + "input_layernorm.weight"] -= 1.0
            tensors[p + "post_attention_layernorm.weight"] -= 1.0
            tensors[p + "pre_feedforward_layernorm.weight"] = normal(HIDDEN, scale=0.1)
            tensors[p + "post_feedforward_layernorm.weight"] = normal(HIDDEN, scale=0.1)
            tensors[p + "self_attn.q_norm.weight"] = normal(HEAD_DIM, scale=0.1)
            tensors[p + "self_attn.k_norm.weight"] = normal(HEAD_DIM, scale=0.1)
    tensors["model.norm.weight"] = normal(HIDDEN, scale=0.1) + (0.0 if kind == "gemma3" else 1.0)
    if kind == "llama":
        tensors["lm_head.weight"] = normal(n_vocab, HIDDEN)
    return tensors


def _base_config(architecture: str, model_type: str, n_vocab: int) -> dict[str, Any]:
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": N_HEAD,
        "num_key_value_heads": N_HEAD_KV,
        "num_hidden_layers": N_LAYER,
        "max_position_embeddings": 256,
        "vocab_size": n_vocab,
        "torch_dtype": "float32",
    }


def make_llama(folder: Path, seed: int = 1) -> Path:
    """A 2-layer Llama 3 style model (GQA, Llama 3 RoPE scaling, bf16 weights, untied head)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(
        LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    )
    n_vocab = 256 + len(BPE_MERGES) + 3 + 5  # 5 spare rows, as real checkpoints have
    config = _base_config("LlamaForCausalLM", "llama", n_vocab) | {
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        "bos_token_id": 256 + len(BPE_MERGES),
        "eos_token_id": 256 + len(BPE_MERGES) + 1,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    tokenizer_config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_folder(folder, config, tokenizer, tokenizer_config)
    rng = np.random.default_rng(seed)
    write_safetensors(folder / "model.safetensors", _decoder_tensors(rng, n_vocab, "llama"), "BF16")
    return folder


def make_qwen2(folder: Path, seed: int = 2) -> Path:
    """A 2-layer Qwen2 style model (q/k/v biases, tied embeddings, f16 weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    n_vocab = 256 + len(BPE_MERGES) + 3
    config = _base_config("Qwen2ForCausalLM", "qwen2", n_vocab) | {
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 256 + len(BPE_MERGES),
        "eos_token_id": 256 + len(BPE_MERGES) + 2,
        "torch_dtype": "float16",
    }
    tokenizer_config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_folder(folder, config, tokenizer, tokenizer_config)
    rng = np.random.default_rng(seed)
    write_safetensors(folder / "model.safetensors", _decoder_tensors(rng, n_vocab, "qwen2"), "F16")
    return folder


def make_gemma3(folder: Path, seed: int = 3) -> Path:
    """A 2-layer Gemma 3 text model (SentencePiece tokenizer.model, f32 weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    pieces = gemma_pieces()
    n_vocab = len(pieces)
    config = _base_config("Gemma3ForCausalLM", "gemma3_text", n_vocab) | {
        "head_dim": HEAD_DIM,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "sliding_window": 32,
        "query_pre_attn_scalar": HEAD_DIM,
        "hidden_activation": "gelu_pytorch_tanh",
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    tokenizer_config = {"bos_token": "<bos>", "eos_token": "<eos>", "add_bos_token": True}
    _write_folder(folder, config, None, tokenizer_config)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(pieces, add_dummy_prefix=False))
    rng = np.random.default_rng(seed)
    write_safetensors(folder / "model.safetensors", _decoder_tensors(rng, n_vocab, "gemma3"), "F32")
    return folder


def _write_folder(
    folder: Path, config: dict, tokenizer: dict | None, tokenizer_config: dict
) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    if tokenizer is not None:
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


# ---------------------------------------------------------------- numpy reference


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE (Hugging Face layout) of x: (n_tokens, n_heads, head_dim)."""
    angles = np.arange(x.shape[0])[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([angles, angles], -1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], -1))[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _llama3_inv_freq(theta: float, rope: dict[str, Any]) -> np.ndarray:
    inv_freq = 1.0 / theta ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    wavelen = 2 * math.pi / inv_freq
    old = rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
    middle = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(middle, smoothed, out)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    k = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
    v = np.repeat(v, q.shape[1] // v.shape[1], axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) * scale
    n = q.shape[0]
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", scores, v).reshape(n, -1)


def reference_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Logits (n_tokens, n_vocab) of the tiny model in `folder` for token `ids`, in float64."""
    config = json.loads((folder / "config.json").read_text())
    w = read_safetensors(folder / "model.safetensors")
    gemma = config["model_type"].startswith("gemma3")
    eps = config["rms_norm_eps"]
    shift = 1.0 if gemma else 0.0

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _rms_norm(x, w[name] + shift, eps)

    x = w["model.embed_tokens.weight"][ids]
    if gemma:
        x = x * math.sqrt(HIDDEN)
    n = len(ids)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        proj = {}
        for name in ("q", "k", "v"):
            out = h @ w[p + f"self_attn.{name}_proj.weight"].T
            if p + f"self_attn.{name}_proj.bias" in w:
                out = out + w[p + f"self_attn.{name}_proj.bias"]
            proj[name] = out.reshape(n, -1, HEAD_DIM)
        if gemma:
            proj["q"] = norm(proj["q"], p + "self_attn.q_norm.weight")
            proj["k"] = norm(proj["k"], p + "self_attn.k_norm.weight")
            sliding = (i + 1) % 6 != 0
            theta = config["rope_local_base_freq"] if sliding else config["rope_theta"]
            inv_freq = 1.0 / theta ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
            scale = config["query_pre_attn_scalar"] ** -0.5
        else:
            rope = config.get("rope_scaling")
            inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
            if rope and rope.get("rope_type") == "llama3":
                inv_freq = _llama3_inv_freq(config["rope_theta"], rope)
            scale = HEAD_DIM**-0.5
        q, k = _rope(proj["q"], inv_freq), _rope(proj["k"], inv_freq)
        attn = _attention(q, k, proj["v"], scale) @ w[p + "self_attn.o_proj.weight"].T
        if gemma:
            x = x + norm(attn, p + "post_attention_layernorm.weight")
            h = norm(x, p + "pre_feedforward_layernorm.weight")
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            gate = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        else:
            x = x + attn
            h = norm(x, p + "post_attention_layernorm.weight")
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            gate = gate / (1 + np.exp(-gate))
        mlp = (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = x + (norm(mlp, p + "post_feedforward_layernorm.weight") if gemma else mlp)
    x = norm(x, "model.norm.weight")
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T
