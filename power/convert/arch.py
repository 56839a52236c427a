"""Architecture knowledge for the converter: which GGUF architecture a folder is, its
hyperparameter keys, and how each safetensors tensor becomes a GGUF tensor.

Tensor names come from `gguf.TensorNameMap` (the same table llama.cpp's own converter uses);
the rewrites on top of it follow llama.cpp's `convert_hf_to_gguf.py`:
- BERT: the `bert.` prefix and old `gamma`/`beta` names go; `position_ids` and the pooler
  (`pooler.dense.*`, unused for embeddings) are dropped.
- Llama: `q_proj`/`k_proj` rows are permuted from Hugging Face's rotate-half RoPE layout to
  llama.cpp's interleaved one; Llama 3 RoPE scaling becomes a `rope_freqs` tensor.
- Gemma 3: the stored RMSNorm weights are offsets from 1 (`x * (1 + w)`), so 1 is added; the
  vision tower and projector of a ConditionalGeneration checkpoint are dropped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import attrs
import gguf
import numpy as np

from power.convert.source import ConversionError, ModelSource, SourceTensor
from power.convert.vocab import (
    Vocabulary,
    bpe_vocabulary,
    is_byte_level_bpe,
    sentencepiece_vocabulary,
    wordpiece_vocabulary,
)

# config.json `architectures[0]` -> GGUF architecture.
ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "BertModel": gguf.MODEL_ARCH.BERT,
    "BertForMaskedLM": gguf.MODEL_ARCH.BERT,
    "BertForSequenceClassification": gguf.MODEL_ARCH.BERT,
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Gemma3ForCausalLM": gguf.MODEL_ARCH.GEMMA3,
    "Gemma3ForConditionalGeneration": gguf.MODEL_ARCH.GEMMA3,
}
# config.json `model_type` -> GGUF architecture, when `architectures` names none we know.
MODEL_TYPES: dict[str, gguf.MODEL_ARCH] = {
    "bert": gguf.MODEL_ARCH.BERT,
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
}

_SKIPPED = re.compile(
    r"(^|\.)(rotary_emb\.inv_freq|position_ids)$"
    r"|^(pooler|cls)\."  # BERT pooler and masked-LM head: not used for embeddings
    r"|^(model\.)?(vision_tower|vision_model|multi_modal_projector|multimodal_projector)\."
)
_BLOCK_ID = re.compile(r"^blk\.(\d+)\.")


@attrs.frozen
class PlannedTensor:
    """One GGUF tensor to write: `load()` returns float32 data of numpy `shape`."""

    name: str
    shape: tuple[int, ...]
    always_f32: bool  # norms, biases, position/type embeddings, rope factors
    load: Callable[[], np.ndarray] = attrs.field(repr=False)


@attrs.frozen
class ConversionPlan:
    """Everything to write for one folder: architecture, hyperparameter keys, vocabulary,
    tensors. `write_hparams(writer)` adds the `{arch}.*` keys except `general.file_type`."""

    arch: gguf.MODEL_ARCH
    write_hparams: Callable[[gguf.GGUFWriter], None]
    vocabulary: Vocabulary
    tensors: list[PlannedTensor]

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


def detect_architecture(source: ModelSource) -> gguf.MODEL_ARCH:
    """The GGUF architecture of a folder, from `architectures` then `model_type`."""
    for name in source.config.get("architectures") or []:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if source.model_type in MODEL_TYPES:
        return MODEL_TYPES[source.model_type]
    supported = ", ".join(sorted(ARCHITECTURES))
    raise ConversionError(
        f"unsupported architecture {source.architecture or source.model_type!r} "
        f"(supported: {supported})"
    )


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q/k projection (or bias) from the rotate-half RoPE layout to
    llama.cpp's interleaved pairs, head by head."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _fit_vocabulary(vocab: Vocabulary, n_vocab: int, notes: list[str]) -> Vocabulary:
    """Pad (UNUSED) or cut the vocabulary to the embedding matrix's row count."""
    n_tokens = len(vocab.tokens)
    if n_tokens == n_vocab:
        return vocab
    if n_tokens > n_vocab:
        notes.append(f"tokenizer has {n_tokens} tokens, the embeddings {n_vocab}: extra dropped")
    extra = range(n_tokens, n_vocab)
    return attrs.evolve(
        vocab,
        tokens=(vocab.tokens + [f"[PAD{i}]" for i in extra])[:n_vocab],
        token_types=(vocab.token_types + [int(gguf.TokenType.UNUSED)] * len(extra))[:n_vocab],
        scores=None if vocab.scores is None else (vocab.scores + [-10000.0] * len(extra))[:n_vocab],
    )


def _tensor_order(tensor: PlannedTensor) -> tuple[int, str]:
    match = _BLOCK_ID.match(tensor.name)
    if match:
        return int(match.group(1)), tensor.name
    return (-1 if tensor.name.startswith(("token", "position", "rope")) else 1 << 30), tensor.name


def _map_tensors(
    source: ModelSource,
    arch: gguf.MODEL_ARCH,
    rename: Callable[[str], str | None],
    transform: Callable[[str, np.ndarray], np.ndarray],
    shape_of: Callable[[str, SourceTensor], tuple[int, ...]] = lambda _name, t: t.shape,
) -> list[PlannedTensor]:
    """Plan every source tensor: `rename` gives the Hugging Face name to map (None: skip),
    `transform(hf_name, data)` rewrites the values; an unknown name is an error."""
    n_blocks = int(source.hparam("num_hidden_layers", "n_layer", "num_layers"))
    name_map = gguf.get_tensor_name_map(arch, n_blocks)
    planned: dict[str, PlannedTensor] = {}
    for raw_name, tensor in source.tensors.items():
        if _SKIPPED.search(raw_name):
            continue
        hf_name = rename(raw_name)
        if hf_name is None:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConversionError(
                f"cannot map tensor {raw_name!r} for {gguf.MODEL_ARCH_NAMES[arch]}"
            )
        shape = shape_of(hf_name, tensor)

        def load(tensor: SourceTensor = tensor, hf_name: str = hf_name) -> np.ndarray:
            return transform(hf_name, tensor.read_float32())

        always_f32 = (
            len(shape) <= 1
            or gguf_name.endswith("_norm.weight")
            or gguf_name.startswith(("position_embd.", "token_types."))
        )
        planned[gguf_name] = PlannedTensor(gguf_name, shape, always_f32, load)
    return sorted(planned.values(), key=_tensor_order)


# ---------------------------------------------------------------- BERT


def _pooling_type(source: ModelSource) -> gguf.PoolingType | None:
    """Pooling of a sentence-transformers folder (modules.json -> Pooling config), or None."""
    modules_file = source.root / "modules.json"
    if not modules_file.is_file():
        return None
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        if not module.get("type", "").endswith(".Pooling"):
            continue
        pooling_file = source.root / module.get("path", "") / "config.json"
        config = json.loads(pooling_file.read_text(encoding="utf-8"))
        if config.get("pooling_mode_mean_tokens"):
            return gguf.PoolingType.MEAN
        if config.get("pooling_mode_cls_token"):
            return gguf.PoolingType.CLS
        if config.get("pooling_mode_lasttoken"):
            return gguf.PoolingType.LAST
        raise ConversionError(f"unsupported pooling in {pooling_file} (mean, cls, last)")
    return None


def plan_bert(source: ModelSource, notes: list[str]) -> ConversionPlan:
    def rename(name: str) -> str:
        name = name.removeprefix("bert.")
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        elif name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        return name

    tensors = _map_tensors(source, gguf.MODEL_ARCH.BERT, rename, lambda _name, data: data)
    n_vocab = next(t.shape[0] for t in tensors if t.name == "token_embd.weight")
    vocab = _fit_vocabulary(wordpiece_vocabulary(source, n_vocab), n_vocab, notes)
    pooling = _pooling_type(source)
    if pooling is None:
        notes.append("no sentence-transformers pooling config: pooling left to the caller")

    def write_hparams(writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(int(source.hparam("max_position_embeddings")))
        writer.add_embedding_length(int(source.hparam("hidden_size")))
        writer.add_feed_forward_length(int(source.hparam("intermediate_size")))
        writer.add_block_count(int(source.hparam("num_hidden_layers")))
        writer.add_head_count(int(source.hparam("num_attention_heads")))
        writer.add_layer_norm_eps(float(source.hparam("layer_norm_eps", default=1e-12)))
        writer.add_causal_attention(False)
        writer.add_token_type_count(int(source.hparam("type_vocab_size", default=1)))
        if pooling is not None:
            writer.add_pooling_type(pooling)

    return ConversionPlan(gguf.MODEL_ARCH.BERT, write_hparams, vocab, tensors)


# ---------------------------------------------------------------- decoders


def _rope_parameters(source: ModelSource) -> dict[str, Any]:
    """RoPE settings of the full-attention layers: `rope_scaling` (older configs) merged with
    `rope_parameters` (newer ones, possibly split by layer type)."""
    parameters = dict(source.hparam("rope_parameters", default={}) or {})
    if isinstance(parameters.get("full_attention"), dict):
        parameters = dict(parameters["full_attention"])
    parameters.update(source.hparam("rope_scaling", default={}) or {})
    return parameters


def _llama3_rope_factors(rope: dict[str, Any], base: float, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3's RoPE scaling (llama.cpp's `rope_freqs` tensor)."""
    factor = float(rope.get("factor", 8.0))
    low_freq_factor = float(rope.get("low_freq_factor", 1.0))
    high_freq_factor = float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def plan_decoder(source: ModelSource, arch: gguf.MODEL_ARCH, notes: list[str]) -> ConversionPlan:
    """Llama, Qwen2 and Gemma 3 (text) decoders."""
    n_embd = int(source.hparam("hidden_size"))
    n_head = int(source.hparam("num_attention_heads", default=8))
    n_head_kv = int(source.hparam("num_key_value_heads", default=n_head))
    is_gemma3 = arch == gguf.MODEL_ARCH.GEMMA3
    head_dim = int(source.hparam("head_dim", default=256 if is_gemma3 else n_embd // n_head))
    rope = _rope_parameters(source)
    rope_type = str(rope.get("rope_type", rope.get("type", "default")))
    rope_theta = float(rope.get("rope_theta", source.hparam("rope_theta", default=10000.0)))
    if is_gemma3:
        rope_theta = float(rope.get("rope_theta", source.hparam("rope_theta", default=1e6)))

    def rename(name: str) -> str | None:
        if is_gemma3:
            if name == "lm_head.weight":  # tied to the embeddings
                return None
            name = name.replace("language_model.", "")
        return name

    def transform(name: str, data: np.ndarray) -> np.ndarray:
        if arch == gguf.MODEL_ARCH.LLAMA:
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                return llama_permute(data, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                return llama_permute(data, n_head_kv)
        if is_gemma3:
            if name.endswith("norm.weight"):
                return data + 1.0
            if name.endswith("embed_tokens.weight"):
                return data[:n_vocab]
        return data

    def shape_of(name: str, tensor: SourceTensor) -> tuple[int, ...]:
        if is_gemma3 and name.endswith("embed_tokens.weight"):
            return (n_vocab, *tensor.shape[1:])
        return tensor.shape

    embeddings = next(
        (t for n, t in source.tensors.items() if n.endswith("embed_tokens.weight")), None
    )
    if embeddings is None:
        raise ConversionError(f"{source.folder}: no embed_tokens tensor")
    n_vocab = embeddings.shape[0]
    vocab = _decoder_vocabulary(source, arch, n_vocab)
    if is_gemma3:  # llama.cpp drops embedding rows past the tokenizer's tokens
        n_vocab = min(n_vocab, len(vocab.tokens))
    vocab = _fit_vocabulary(vocab, n_vocab, notes)
    notes.extend(vocab.notes)
    tensors = _map_tensors(source, arch, rename, transform, shape_of)
    if arch == gguf.MODEL_ARCH.LLAMA and rope_type == "llama3":
        factors = _llama3_rope_factors(rope, rope_theta, head_dim)
        tensors.insert(0, PlannedTensor("rope_freqs.weight", factors.shape, True, lambda: factors))

    def write_hparams(writer: gguf.GGUFWriter) -> None:
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(
            int(source.hparam("max_position_embeddings", default=131072 if is_gemma3 else 4096))
        )
        writer.add_embedding_length(n_embd)
        writer.add_block_count(int(source.hparam("num_hidden_layers")))
        writer.add_feed_forward_length(int(source.hparam("intermediate_size")))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_layer_norm_rms_eps(float(source.hparam("rms_norm_eps", default=1e-6)))
        writer.add_rope_freq_base(rope_theta)
        if is_gemma3 or head_dim != n_embd // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if arch == gguf.MODEL_ARCH.LLAMA:
            writer.add_rope_dimension_count(head_dim)
        if is_gemma3:
            if source.hparam("sliding_window_pattern", default=0) != 1 and source.hparam(
                "sliding_window"
            ):
                writer.add_sliding_window(int(source.hparam("sliding_window")))
            if softcap := source.hparam("final_logit_softcapping"):
                writer.add_final_logit_softcapping(float(softcap))
        _write_rope_scaling(writer, rope, rope_type, notes)

    return ConversionPlan(arch, write_hparams, vocab, tensors)


def _write_rope_scaling(
    writer: gguf.GGUFWriter, rope: dict[str, Any], rope_type: str, notes: list[str]
) -> None:
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if "original_max_position_embeddings" in rope:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", "llama3"):
        notes.append(f"RoPE scaling {rope_type!r} is not converted")


def _decoder_vocabulary(source: ModelSource, arch: gguf.MODEL_ARCH, n_vocab: int) -> Vocabulary:
    """SentencePiece when the folder has `tokenizer.model` (or a SentencePiece-style
    tokenizer.json), byte-level BPE otherwise."""
    tokenizer_json = source.read_json("tokenizer.json")
    if (source.folder / "tokenizer.model").is_file() or (
        tokenizer_json is not None and not is_byte_level_bpe(tokenizer_json)
    ):
        vocab = sentencepiece_vocabulary(source, n_vocab)
        if arch == gguf.MODEL_ARCH.GEMMA3:
            vocab = attrs.evolve(vocab, add_space_prefix=False)
        return vocab
    fallback_pre = "qwen2" if arch == gguf.MODEL_ARCH.QWEN2 else "llama-bpe"
    return bpe_vocabulary(source, n_vocab, fallback_pre)


def plan_conversion(source: ModelSource, notes: list[str]) -> ConversionPlan:
    """The plan for any supported folder; `notes` collects what was guessed or left out."""
    arch = detect_architecture(source)
    if arch == gguf.MODEL_ARCH.BERT:
        return plan_bert(source, notes)
    return plan_decoder(source, arch, notes)
