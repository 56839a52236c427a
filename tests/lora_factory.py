"""Write small LoRA adapter GGUF files for a real base model, for the adapter tests.

The layout is the one llama.cpp's `convert_lora_to_gguf.py` writes and `llama_adapter_lora_init`
reads: `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (float32),
`general.architecture` equal to the base model's, and for every adapted weight `W` of the base
(ggml shape `(n_in, n_out)`) two tensors `<W>.lora_a` with ggml shape `(n_in, rank)` and
`<W>.lora_b` with ggml shape `(rank, n_out)` (numpy shapes `(rank, n_in)` and `(n_out, rank)`).
llama.cpp adds `(alpha / rank) * B @ A @ x` to `W @ x`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np

from power.registry.gguf_meta import read_gguf_info

DEFAULT_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_lora_adapter(
    base_gguf: Path | str,
    out: Path | str,
    *,
    layers: Iterable[int] = (0, 1, 2, 3),
    targets: Iterable[str] = DEFAULT_TARGETS,
    rank: int = 4,
    alpha: float | None = None,
    b_std: float = 0.0,
    seed: int = 0,
    dtype: type[np.floating] = np.float32,
    architecture: str | None = None,
    transpose_a: bool = False,
) -> Path:
    """Write a LoRA adapter for the weights `blk.<layer>.<target>.weight` of `base_gguf` to `out`.

    A is drawn from N(0, 1/n_in) (so `A @ x` keeps the scale of `x`); B from N(0, b_std²), so
    `b_std=0` gives an adapter that changes nothing and a large `b_std` one that changes a lot.
    `alpha` defaults to `rank` (scale 1). `architecture` overrides the base's (to make a
    mismatched adapter); `transpose_a=True` writes A the wrong way round (an invalid adapter).
    Returns `out`.
    """
    info = read_gguf_info(base_gguf)
    shapes = {tensor.name: tensor.shape for tensor in info.tensors}
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            if name not in shapes:
                raise KeyError(f"{base_gguf} has no tensor {name}")
            n_in, n_out = shapes[name]
            lora_a = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(rank, n_in))
            if transpose_a:
                lora_a = lora_a.T
            lora_b = (
                rng.normal(0.0, b_std, size=(n_out, rank)) if b_std else np.zeros((n_out, rank))
            )
            tensors[name + ".lora_a"] = lora_a.astype(dtype)
            tensors[name + ".lora_b"] = lora_b.astype(dtype)
    return write_lora_tensors(
        out,
        architecture or info.architecture,
        tensors,
        alpha=float(rank if alpha is None else alpha),
    )


def write_lora_tensors(
    out: Path | str, architecture: str, tensors: dict[str, np.ndarray], *, alpha: float
) -> Path:
    """Write an adapter GGUF with exactly `tensors` (numpy shapes, names as stored). Returns `out`."""
    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)
