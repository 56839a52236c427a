"""GGUF header facts: on the real test models, and on small hand-made files for each rule."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from power.registry.gguf_meta import (
    GGUFError,
    file_type_from_name,
    file_type_name,
    human_number,
    read_gguf_info,
    read_gguf_info_cached,
)


def test_gemma(gemma_gguf: Path) -> None:
    info = read_gguf_info(gemma_gguf)
    assert info.architecture == "gemma3"
    assert info.family == "gemma3"
    assert info.families == ["gemma3"]
    assert info.parameter_count == 268_098_176
    assert info.parameter_size == "268.10M"
    assert info.quantization_level == "Q4_K_M"
    assert info.file_type == 15
    assert 4.0 < info.bits_per_weight < 9.0
    assert info.context_length == 32768
    assert info.embedding_length == 640
    assert info.chat_template is None
    assert not info.has_pooling and not info.is_embedding
    assert not info.has_fim_tokens
    assert info.capabilities == ["completion"]
    assert info.kind == "model" and not info.is_projector and not info.is_adapter
    assert len(info.tensors) == 236
    model_info = info.model_info
    assert "general.name" not in model_info
    assert "tokenizer.chat_template" not in model_info
    assert model_info["general.architecture"] == "gemma3"
    assert model_info["general.parameter_count"] == 268_098_176
    assert model_info["gemma3.context_length"] == 32768
    assert model_info["gemma3.attention.layer_norm_rms_epsilon"] == 1e-06  # float32, shortest
    assert model_info["tokenizer.ggml.tokens"] == []  # long arrays emptied unless verbose
    assert model_info["tokenizer.ggml.scores"] == []
    assert model_info["general.tags"] == ["gemma3", "gemma", "google", "text-generation"]


def test_gemma_verbose_has_the_vocabulary(gemma_gguf: Path) -> None:
    info = read_gguf_info(gemma_gguf, verbose=True)
    tokens = info.model_info["tokenizer.ggml.tokens"]
    assert len(tokens) == 262_144
    assert tokens[:3] == ["<pad>", "<eos>", "<bos>"]
    assert len(info.model_info["tokenizer.ggml.token_type"]) == 262_144


def test_qwen(qwen_gguf: Path) -> None:
    info = read_gguf_info_cached(qwen_gguf)
    assert info.architecture == "qwen2"
    assert info.quantization_level == "Q4_K_M"
    assert info.parameter_size == human_number(info.parameter_count)
    assert info.chat_template is not None and "tools" in info.chat_template
    assert "tools" in info.capabilities
    assert "completion" in info.capabilities
    assert info.has_fim_tokens  # <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|> in the vocab
    assert "insert" in info.capabilities
    assert "thinking" not in info.capabilities
    assert read_gguf_info_cached(qwen_gguf) is info


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (7_000_000_000, "7B"),
        (1_500_000_000, "1.5B"),
        (494_032_768, "494.03M"),
        (268_098_176, "268.10M"),
        (5_000_000, "5M"),
        (22_565_376, "22.57M"),
        (999_000, "999K"),
        (1_000, "1K"),
        (999, "999"),
        (0, "0"),
    ],
)
def test_human_number(count: int, text: str) -> None:
    assert human_number(count) == text


def test_file_type_names() -> None:
    assert file_type_name(15) == "Q4_K_M"
    assert file_type_name(1) == "F16"
    assert file_type_name(0) == "F32"
    assert file_type_name(32) == "BF16"
    assert file_type_name(None) == "unknown"
    assert file_type_name(9999) == "unknown"
    assert file_type_from_name("q4_K_M") == 15
    assert file_type_from_name("Q4_K") == 15
    assert file_type_from_name("q8_0") == 7
    assert file_type_from_name("f16") == 1
    with pytest.raises(ValueError, match="unsupported quantization type"):
        file_type_from_name("q9_9")


# ---------------------------------------------------------------- hand-made files


def _write_gguf(path: Path, arch: str = "llama", **keys: object) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        key = key.replace("__", ".")
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    writer.add_tensor("blk.0.weight", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((8,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_hand_made_model_counts_tensors(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "m.gguf", general__file_type=1, llama__context_length=2048)
    info = read_gguf_info(path)
    assert info.parameter_count == 32 + 8
    assert info.tensor_bytes == 32 * 4 + 8 * 2
    assert info.quantization_level == "F16"
    assert info.context_length == 2048
    assert [t.name for t in info.tensors] == ["blk.0.weight", "output.weight"]
    assert info.tensors[0].type == "F32"
    assert info.capabilities == ["completion"]


def test_embedding_vision_thinking_and_fim(tmp_path: Path) -> None:
    embedding = read_gguf_info(_write_gguf(tmp_path / "e.gguf", "bert", bert__pooling_type=1))
    assert embedding.is_embedding and embedding.capabilities == ["embedding"]

    vision = read_gguf_info(
        _write_gguf(tmp_path / "v.gguf", llama__vision__block_count=2, llama__block_count=2)
    )
    assert "vision" in vision.capabilities and not vision.is_projector

    thinking = read_gguf_info(
        _write_gguf(
            tmp_path / "t.gguf",
            tokenizer__chat_template="{% for m in messages %}<think>{{ m }}</think>{% endfor %}",
        )
    )
    assert thinking.capabilities == ["completion", "thinking"]

    fim_ids = read_gguf_info(
        _write_gguf(
            tmp_path / "f.gguf",
            tokenizer__ggml__fim_pre_token_id=1,
            tokenizer__ggml__fim_suf_token_id=2,
            tokenizer__ggml__fim_mid_token_id=3,
        )
    )
    assert "insert" in fim_ids.capabilities

    vocabulary = ["a", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "b", "c", "d"]
    fim_vocab = read_gguf_info(_write_gguf(tmp_path / "g.gguf", tokenizer__ggml__tokens=vocabulary))
    assert fim_vocab.has_fim_tokens
    partial_vocab = read_gguf_info(
        _write_gguf(
            tmp_path / "h.gguf", tokenizer__ggml__tokens=["<fim_prefix>x", "y", "z", "w", "v", "u"]
        )
    )
    assert not partial_vocab.has_fim_tokens


def test_projector_and_adapter_kinds(tmp_path: Path) -> None:
    projector = read_gguf_info(
        _write_gguf(
            tmp_path / "p.gguf", "clip", general__type="mmproj", clip__has_vision_encoder=True
        )
    )
    assert projector.is_projector
    adapter = read_gguf_info(_write_gguf(tmp_path / "a.gguf", general__type="adapter"))
    assert adapter.is_adapter and not adapter.is_projector


def test_short_arrays_are_shown_long_ones_emptied(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "arr.gguf", short=[1, 2, 3], long=list(range(6)))
    info = read_gguf_info(path)
    assert info.model_info["short"] == [1, 2, 3]
    assert info.model_info["long"] == []
    assert read_gguf_info(path, verbose=True).model_info["long"] == list(range(6))


def test_not_gguf(tmp_path: Path) -> None:
    text = tmp_path / "model.bin"
    text.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf_info(text)
    valid = _write_gguf(tmp_path / "ok.gguf", some__key="value")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(valid.read_bytes()[:40])
    with pytest.raises(GGUFError):
        read_gguf_info(truncated)
