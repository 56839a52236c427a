"""power's own Hugging Face -> GGUF converter (numpy + gguf, no torch), and quantization.

`convert_folder` turns a safetensors folder into a GGUF file that llama.cpp loads:
- BERT (`BertModel`, sentence-transformers folders included) -> architecture `bert`, WordPiece
  tokenizer, pooling from `1_Pooling/config.json`: an embedding model;
- `LlamaForCausalLM` (and Mistral) -> `llama`, `Qwen2ForCausalLM` -> `qwen2`,
  `Gemma3ForCausalLM` / `Gemma3ForConditionalGeneration` (its text model) -> `gemma3`, with
  the tokenizer (byte-level BPE or SentencePiece), special tokens and chat template.

Output types (`out_type`): "f32", "f16", "bf16", or "auto". "auto" keeps the precision the
weights are stored in: float32 checkpoints stay F32 (exact; such checkpoints are small models
like all-MiniLM-L6-v2, where F32 costs little and keeps embeddings bit-faithful), float16 ones
become F16 and bfloat16 ones BF16. Whatever the type, 1-D tensors (norms, biases), position and
token-type embeddings stay F32, as in llama.cpp's converter. For smaller files, convert and then
`quantize` (q8_0, q4_K_M, ...), which runs llama.cpp's own quantizer.

The output is written tensor by tensor from memory-mapped inputs, so converting needs about one
tensor's worth of memory, not the model's. It goes to a temporary name beside `dst` and is renamed
into place at the end: an interrupted run leaves no truncated `dst` behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from power.convert.arch import PlannedTensor, plan_conversion
from power.convert.source import FLOAT_DTYPES, ConversionError, open_model_folder
from power.convert.vocab import write_vocabulary

__all__ = ["QUANT_TYPES", "ConversionError", "convert_folder", "quantize"]

_OUT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}

# Quantization names (as Ollama and llama-quantize spell them, matched case-insensitively)
# -> llama.cpp's `llama_ftype` values (see llama_cpp.LLAMA_FTYPE_MOSTLY_*).
QUANT_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q2_K": 10,
    "q3_K_S": 11,
    "q3_K_M": 12,
    "q3_K_L": 13,
    "q4_K_S": 14,
    "q4_K_M": 15,
    "q5_K_S": 16,
    "q5_K_M": 17,
    "q6_K": 18,
    "iq4_NL": 25,
    "iq4_XS": 30,
    "bf16": 32,
}


def _auto_out_type(dtypes: dict[str, str]) -> str:
    """The stored precision of the first 2-D float weight: BF16 -> bf16, F16 -> f16, else f32."""
    for tensor_dtype in dtypes.values():
        if tensor_dtype == "BF16":
            return "bf16"
        if tensor_dtype == "F16":
            return "f16"
        if tensor_dtype in FLOAT_DTYPES:
            return "f32"
    return "f32"


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 data in its GGUF storage form (float32, float16, or raw bf16 bytes)."""
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _add_tensor_info(
    writer: gguf.GGUFWriter, tensor: PlannedTensor, qtype: gguf.GGMLQuantizationType
) -> None:
    n_elements = int(np.prod(tensor.shape, dtype=np.int64))
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), 4 * n_elements)
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float16), 2 * n_elements)
    else:
        byte_shape = gguf.quants.quant_shape_to_byte_shape(tensor.shape, qtype)
        n_bytes = int(np.prod(byte_shape, dtype=np.int64))
        writer.add_tensor_info(
            tensor.name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=qtype
        )


def _model_name(src: Path, config: dict) -> str:
    name_or_path = str(config.get("_name_or_path") or "").rstrip("/")
    return name_or_path.rsplit("/", 1)[-1] or src.name


def convert_folder(
    src: Path,
    dst: Path,
    *,
    out_type: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert the Hugging Face safetensors folder `src` into the GGUF file `dst`; return `dst`.

    `out_type` is "auto", "f32", "f16" or "bf16" (see the module docstring). `progress`, when
    given, receives one-line messages (architecture, notes on anything guessed, each tensor).
    Raises ConversionError (a ValueError) for an unsupported or incomplete folder, and
    ValueError for an unknown `out_type`; `dst` is then left untouched. Blocking (seconds to
    minutes, CPU and disk bound): call it from async code through `trio.to_thread.run_sync`.
    """
    report = progress or (lambda _message: None)
    out_type = out_type.lower()
    if out_type != "auto" and out_type not in _OUT_TYPES:
        raise ValueError(f"unknown out_type {out_type!r} (valid: auto, {', '.join(_OUT_TYPES)})")
    src, dst = Path(src), Path(dst)
    source = open_model_folder(src)
    notes: list[str] = []
    plan = plan_conversion(source, notes)
    if out_type == "auto":
        matrices = {n: t.dtype for n, t in source.tensors.items() if len(t.shape) >= 2}
        out_type = _auto_out_type(matrices)
    qtype, file_type = _OUT_TYPES[out_type]
    report(f"converting {source.architecture or source.model_type} as {plan.arch_name}, {out_type}")
    for note in notes:
        report(f"note: {note}")

    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, plan.arch_name)
    try:
        writer.add_name(_model_name(src, source.config))
        plan.write_hparams(writer)
        writer.add_file_type(int(file_type))
        write_vocabulary(writer, source, plan.vocabulary)
        types = [gguf.GGMLQuantizationType.F32 if t.always_f32 else qtype for t in plan.tensors]
        for tensor, tensor_type in zip(plan.tensors, types, strict=True):
            _add_tensor_info(writer, tensor, tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, (tensor, tensor_type) in enumerate(zip(plan.tensors, types, strict=True), 1):
            data = tensor.load()
            if data.shape != tensor.shape:
                raise ConversionError(f"{tensor.name}: shape {data.shape}, planned {tensor.shape}")
            writer.write_tensor_data(_encode(data, tensor_type))
            report(
                f"[{i}/{len(plan.tensors)}] {tensor.name} {tensor_type.name} {list(tensor.shape)}"
            )
        writer.close()
        tmp.replace(dst)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    report(f"wrote {dst}")
    return dst


def quant_type_names() -> list[str]:
    """The names `quantize` accepts."""
    return list(QUANT_TYPES)


def quantize(src: Path, dst: Path, quant_type: str, *, n_threads: int = 0) -> Path:
    """Quantize the GGUF file `src` into `dst` with llama.cpp's quantizer; return `dst`.

    `quant_type` is one of QUANT_TYPES (case-insensitive: "q4_K_M", "Q8_0", "f16", ...); an
    unknown name raises ValueError listing the valid ones. `n_threads` <= 0 lets llama.cpp use
    every core. Tensors whose rows do not fit a k-quant's 256-wide blocks fall back to a
    compatible type (llama.cpp's rule). Blocking, like `convert_folder`. Raises RuntimeError when llama.cpp reports a failure
    (unreadable input, unsupported architecture); `dst` is then absent.
    """
    by_lower_name = {name.lower(): ftype for name, ftype in QUANT_TYPES.items()}
    ftype = by_lower_name.get(quant_type.lower())
    if ftype is None:
        raise ValueError(f"unknown quantization {quant_type!r} (valid: {', '.join(QUANT_TYPES)})")
    import llama_cpp  # deferred: loading libllama is not free, and conversion does not need it

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(src)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(0, n_threads)
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    try:
        status = llama_cpp.llama_model_quantize(
            os.fsencode(src), os.fsencode(tmp), ctypes.byref(params)
        )
        if status != 0:
            raise RuntimeError(
                f"llama.cpp could not quantize {src} to {quant_type} (status {status})"
            )
        tmp.replace(dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dst
