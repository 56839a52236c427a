"""power.convert.converter: Hugging Face folders -> GGUF, checked by running the result in llama.cpp.

- all-MiniLM-L6-v2 (the real sentence-transformers folder) converts; llama.cpp embeds with it,
  tokenizes exactly as BERT's WordPiece does, and its embeddings match an independent numpy
  forward pass (tests/minilm_reference.py) with cosine >= 0.999; q8_0 quantization keeps them.
- Tiny Llama (bf16), Qwen2 (f16) and Gemma 3 (f32, tokenizer.model) folders built here convert;
  llama.cpp's logits match a numpy reference of the Hugging Face model (so the q/k permutation,
  RoPE scaling factors and norm offsets are right), text round-trips through the tokenizer, and
  greedy decoding runs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from power.convert.converter import ConversionError, convert_folder, quantize
from tests.convert_tiny_models import make_gemma3, make_llama, make_qwen2, reference_logits
from tests.minilm_reference import MiniLMReference

llama_cpp.llama_backend_init()


class LlamaModel:
    """A model and one context through llama.cpp's low-level API (the test's own small owner)."""

    def __init__(self, path: Path, *, embeddings: bool = False, n_ctx: int = 256) -> None:
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, f"llama.cpp could not load {path}"
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = n_ctx
        context_params.n_batch = n_ctx
        context_params.n_ubatch = n_ctx
        context_params.n_threads = 2
        context_params.n_threads_batch = 2
        if embeddings:
            context_params.embeddings = True
            context_params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self.context = llama_cpp.llama_init_from_model(self.model, context_params)
        assert self.context
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.context)
        llama_cpp.llama_model_free(self.model)

    def meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode() if n >= 0 else None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode()
        tokens = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, len(tokens), add_special, True
        )
        assert n >= 0
        return list(tokens[:n])

    def detokenize(self, ids: list[int]) -> str:
        out = b""
        buffer = ctypes.create_string_buffer(64)
        for token in ids:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            out += buffer.raw[:n]
        return out.decode(errors="replace")

    def _fill(self, ids: list[int], first_pos: int, want_last: bool) -> None:
        self.batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            self.batch.token[i] = token
            self.batch.pos[i] = first_pos + i
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
            self.batch.logits[i] = 1 if (want_last and i == len(ids) - 1) else 0

    def embed(self, text: str) -> np.ndarray:
        ids = self.tokenize(text)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.context), True)
        self._fill(ids, 0, want_last=False)
        for i in range(len(ids)):
            self.batch.logits[i] = 1
        assert llama_cpp.llama_encode(self.context, self.batch) == 0
        n_embd = llama_cpp.llama_model_n_embd(self.model)
        pointer = llama_cpp.llama_get_embeddings_seq(self.context, 0)
        return np.ctypeslib.as_array(pointer, shape=(n_embd,)).astype(np.float64)

    def decode(self, ids: list[int], first_pos: int) -> np.ndarray:
        """Decode `ids` at positions from `first_pos`; the last token's logits."""
        self._fill(ids, first_pos, want_last=True)
        assert llama_cpp.llama_decode(self.context, self.batch) == 0
        pointer = llama_cpp.llama_get_logits_ith(self.context, len(ids) - 1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def read_gguf(path: Path) -> tuple[dict[str, object], dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(path)
    fields = {
        key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")
    }
    return fields, {tensor.name: tensor for tensor in reader.tensors}


# ---------------------------------------------------------------- all-MiniLM-L6-v2

SENTENCES = [
    "a cat sits on the mat",
    "a kitten rests on a rug",
    "quarterly revenue rose by 4%",
    "Héllo, WORLD!! naïve café -- don't panic",
]


@pytest.fixture(scope="module")
def minilm_converted(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    messages: list[str] = []
    path = convert_folder(
        minilm_dir, tmp_path_factory.mktemp("minilm") / "minilm.gguf", progress=messages.append
    )
    assert messages[0].startswith("converting BertModel as bert")
    assert messages[-1].startswith("wrote ")
    return path


@pytest.fixture(scope="module")
def minilm_model(minilm_converted: Path) -> Iterator[LlamaModel]:
    model = LlamaModel(minilm_converted, embeddings=True)
    yield model
    model.close()


@pytest.fixture(scope="module")
def minilm_reference(minilm_dir: Path) -> MiniLMReference:
    return MiniLMReference(minilm_dir)


def test_minilm_gguf_metadata(minilm_converted: Path) -> None:
    fields, tensors = read_gguf(minilm_converted)
    assert fields["general.architecture"] == "bert"
    assert fields["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    assert fields["bert.block_count"] == 6
    assert fields["bert.embedding_length"] == 384
    assert fields["bert.pooling_type"] == int(gguf.PoolingType.MEAN)
    assert fields["bert.attention.causal"] is False
    assert fields["tokenizer.ggml.model"] == "bert"
    assert fields["tokenizer.ggml.token_type_count"] == 2
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 30522
    assert tokens[101] == "[CLS]" and tokens[7592] == "▁hello" and tokens[2015] == "s"  # "##s"
    assert fields["tokenizer.ggml.cls_token_id"] == 101
    assert fields["tokenizer.ggml.seperator_token_id"] == 102
    assert fields["tokenizer.ggml.padding_token_id"] == 0
    assert fields["tokenizer.ggml.unknown_token_id"] == 100
    assert fields["tokenizer.ggml.mask_token_id"] == 103
    assert "pooler.dense.weight" not in tensors and len(tensors) == 5 + 6 * 16
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@pytest.mark.slow
def test_minilm_tokenizes_like_wordpiece(
    minilm_model: LlamaModel, minilm_reference: MiniLMReference
) -> None:
    for text in SENTENCES:
        assert minilm_model.tokenize(text) == minilm_reference.tokenize(text), text


@pytest.mark.slow
def test_minilm_embeddings_are_semantic(minilm_model: LlamaModel) -> None:
    cat, kitten, revenue = (minilm_model.embed(t) for t in SENTENCES[:3])
    assert cat.shape == (384,)
    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.2


@pytest.mark.slow
def test_minilm_embeddings_match_numpy_reference(
    minilm_model: LlamaModel, minilm_reference: MiniLMReference
) -> None:
    for text in SENTENCES:
        assert cosine(minilm_model.embed(text), minilm_reference.embed(text)) >= 0.999, text


@pytest.mark.slow
def test_minilm_f16_and_q8_0_stay_close(
    minilm_dir: Path, minilm_converted: Path, minilm_reference: MiniLMReference, tmp_path: Path
) -> None:
    f16 = convert_folder(minilm_dir, tmp_path / "f16.gguf", out_type="f16")
    q8 = quantize(minilm_converted, tmp_path / "q8_0.gguf", "Q8_0", n_threads=2)
    assert q8.stat().st_size < 0.4 * minilm_converted.stat().st_size
    for path, file_type in (
        (f16, gguf.LlamaFileType.MOSTLY_F16),
        (q8, gguf.LlamaFileType.MOSTLY_Q8_0),
    ):
        fields, _ = read_gguf(path)
        assert fields["general.file_type"] == int(file_type)
        model = LlamaModel(path, embeddings=True)
        try:
            for text in SENTENCES[:2]:
                assert cosine(model.embed(text), minilm_reference.embed(text)) >= 0.99
        finally:
            model.close()


# ---------------------------------------------------------------- tiny decoders

BUILDERS = {"llama": make_llama, "qwen2": make_qwen2, "gemma3": make_gemma3}


@pytest.fixture(scope="module", params=list(BUILDERS))
def tiny(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    kind = request.param
    folder = BUILDERS[kind](tmp_path_factory.mktemp(kind) / "hf")
    return kind, folder, convert_folder(folder, folder.parent / f"{kind}.gguf")


def test_tiny_gguf_metadata(tiny: tuple[str, Path, Path]) -> None:
    kind, _folder, path = tiny
    fields, tensors = read_gguf(path)
    assert fields["general.architecture"] == kind
    assert fields[f"{kind}.block_count"] == 2
    assert fields[f"{kind}.attention.head_count_kv"] == 2
    expected_file_type = {"llama": "MOSTLY_BF16", "qwen2": "MOSTLY_F16", "gemma3": "ALL_F32"}[kind]
    assert fields["general.file_type"] == int(gguf.LlamaFileType[expected_file_type])
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    if kind == "gemma3":
        assert fields["tokenizer.ggml.model"] == "llama"
        assert fields["gemma3.attention.sliding_window"] == 32
        assert fields["tokenizer.ggml.add_space_prefix"] is False
        assert fields["tokenizer.ggml.bos_token_id"] == 2
        assert "output.weight" not in tensors
    else:
        assert fields["tokenizer.ggml.model"] == "gpt2"
        assert fields["tokenizer.ggml.pre"] == {"llama": "llama-bpe", "qwen2": "qwen2"}[kind]
        assert fields["tokenizer.ggml.merges"][:2] == ["Ġ t", "h e"]
        assert "<|im_start|>" in fields["tokenizer.chat_template"]
    if kind == "llama":
        assert "rope_freqs.weight" in tensors
        assert fields["llama.rope.dimension_count"] == 16
        assert fields["tokenizer.ggml.bos_token_id"] == 263
        assert fields["tokenizer.ggml.add_bos_token"] is True
        assert len(fields["tokenizer.ggml.tokens"]) == 271  # padded to the embedding rows
    if kind == "qwen2":
        assert fields["tokenizer.ggml.eos_token_id"] == 265
        assert "blk.0.attn_q.bias" in tensors


@pytest.mark.slow
def test_tiny_model_matches_reference_and_decodes(tiny: tuple[str, Path, Path]) -> None:
    kind, folder, path = tiny
    model = LlamaModel(path)
    try:
        text = "the cat sat on the mat"
        ids = model.tokenize(text)
        assert model.detokenize(ids).strip().endswith(text)
        logits = model.decode(ids, 0)
        expected = reference_logits(folder, ids)[-1]
        assert cosine(logits, expected) >= 0.999, kind
        assert int(np.argmax(logits)) == int(np.argmax(expected))
        position = len(ids)
        for _ in range(4):  # greedy decoding, token by token
            token = int(np.argmax(logits))
            logits = model.decode([token], position)
            position += 1
            assert np.isfinite(logits).all()
    finally:
        model.close()


@pytest.mark.slow
def test_quantize_tiny_qwen2(tmp_path: Path) -> None:
    converted = convert_folder(make_qwen2(tmp_path / "hf"), tmp_path / "f16.gguf")
    out = quantize(converted, tmp_path / "q8.gguf", "q8_0")
    fields, tensors = read_gguf(out)
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    model = LlamaModel(out)
    try:
        assert np.isfinite(model.decode(model.tokenize("the cat"), 0)).all()
    finally:
        model.close()


# ---------------------------------------------------------------- errors


def test_unknown_quantization_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="q4_K_M") as caught:
        quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "q4_K_X")
    assert "q8_0" in str(caught.value)


def test_unknown_out_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="f16"):
        convert_folder(tmp_path, tmp_path / "out.gguf", out_type="q3")


def test_unsupported_architecture(tmp_path: Path) -> None:
    folder = make_qwen2(tmp_path / "hf")
    config = (folder / "config.json").read_text().replace("Qwen2ForCausalLM", "FalconForCausalLM")
    (folder / "config.json").write_text(config.replace('"qwen2"', '"falcon"'))
    with pytest.raises(ConversionError, match="FalconForCausalLM"):
        convert_folder(folder, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))


def test_unknown_tensor_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    from tests.convert_tiny_models import read_safetensors, write_safetensors

    folder = make_qwen2(tmp_path / "hf")
    tensors = {
        k: v.astype(np.float32) for k, v in read_safetensors(folder / "model.safetensors").items()
    }
    tensors["model.layers.0.mystery.weight"] = np.zeros((2, 2), np.float32)
    write_safetensors(folder / "model.safetensors", tensors, "F32")
    with pytest.raises(ConversionError, match="mystery"):
        convert_folder(folder, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConversionError):
        convert_folder(tmp_path / "nope", tmp_path / "out.gguf")


def test_gemma3_conditional_generation_takes_the_text_model(tmp_path: Path) -> None:
    """A multimodal Gemma 3 checkpoint: hyperparameters under text_config, weights under
    `language_model.`, a vision tower that is left out; the result equals the text-only one."""
    import json

    from tests.convert_tiny_models import read_safetensors, write_safetensors

    plain = make_gemma3(tmp_path / "plain")
    multimodal = make_gemma3(tmp_path / "multimodal")
    text_config = json.loads((multimodal / "config.json").read_text())
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text_config,
        "vision_config": {"hidden_size": 8},
    }
    (multimodal / "config.json").write_text(json.dumps(config))
    tensors = {
        "language_model." + name: values.astype(np.float32)
        for name, values in read_safetensors(multimodal / "model.safetensors").items()
    }
    tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones(
        (8, 8), np.float32
    )
    tensors["multi_modal_projector.mm_input_projection_weight"] = np.ones((8, 64), np.float32)
    write_safetensors(multimodal / "model.safetensors", tensors, "F32")

    fields_plain, tensors_plain = read_gguf(convert_folder(plain, tmp_path / "plain.gguf"))
    fields_multi, tensors_multi = read_gguf(convert_folder(multimodal, tmp_path / "multi.gguf"))
    assert fields_multi["general.architecture"] == "gemma3"
    assert sorted(tensors_multi) == sorted(tensors_plain)
    for name, tensor in tensors_plain.items():
        assert np.array_equal(tensors_multi[name].data, tensor.data), name
    for key in ("gemma3.embedding_length", "gemma3.attention.key_length", "gemma3.rope.freq_base"):
        assert fields_multi[key] == fields_plain[key]


def test_quantize_reports_llama_cpp_failure(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(RuntimeError, match="could not quantize"):
        quantize(garbage, tmp_path / "out.gguf", "q8_0")
    assert not list(tmp_path.glob("out.gguf*"))
