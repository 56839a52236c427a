"""Write a tiny vision projector GGUF (an "mmproj" file) for a real text model, for image tests.

No small real vision model ships in a package registry, so the image tests build one: libmtmd's
simplest projector type, LLaVA's `mlp`, with random weights. It is a CLIP ViT (patch embedding
convolution, learned position embeddings, pre-norm transformer blocks) followed by a two-layer
MLP (`mm.0` → GELU → `mm.2`) whose output width is the text model's embedding width, so libmtmd
accepts it beside that model. The layout is what `tools/mtmd/clip.cpp` reads:

- keys: `general.architecture = "clip"`, `general.type = "mmproj"`, `clip.projector_type = "mlp"`,
  `clip.has_vision_encoder`, `clip.use_gelu`, and under `clip.vision.`: `image_size`,
  `patch_size`, `embedding_length`, `feed_forward_length`, `block_count`, `projection_dim`,
  `attention.head_count`, `attention.layer_norm_epsilon`, `image_mean`, `image_std`;
- tensors (numpy shapes; ggml's are reversed): `v.patch_embd.weight` (n_embd, 3, patch, patch),
  `v.patch_embd.bias`, `v.position_embd.weight` (n_patches, n_embd), `v.pre_ln.*`, per block
  `v.blk.N.{ln1,ln2}.{weight,bias}`, `v.blk.N.attn_{q,k,v,out}.{weight,bias}` (n_embd, n_embd),
  `v.blk.N.ffn_up.*` (n_ff, n_embd), `v.blk.N.ffn_down.*` (n_embd, n_ff), then
  `mm.0.{weight,bias}` (n_embd_text, n_embd) and `mm.2.{weight,bias}` (n_embd_text, n_embd_text).

clip.cpp runs the blocks up to the second-to-last one (LLaVA takes that layer's features), so
an image of `image_size`² pixels becomes (image_size / patch_size)² embeddings. The projection is
scaled so that image embeddings have the magnitude of the text model's token embeddings: two
different images then steer a greedy continuation differently.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

#: The defaults: a 32x32 image in 8x8 patches gives 16 image tokens.
IMAGE_SIZE = 32
PATCH_SIZE = 8


def n_image_tokens(image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE) -> int:
    return (image_size // patch_size) ** 2


def write_projector(
    out: Path | str,
    n_embd_text: int,
    *,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    n_embd: int = 64,
    n_ff: int = 128,
    n_head: int = 4,
    n_layer: int = 2,
    output_scale: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write an `mlp` projector whose output width is `n_embd_text` to `out`; returns `out`.

    `output_scale` is the standard deviation of each output embedding's entries (about that
    of a text model's token embeddings); `seed` picks the random weights."""
    if image_size % patch_size:
        raise ValueError("image_size must be a multiple of patch_size")
    if n_ff == n_embd:
        raise ValueError("n_ff must differ from n_embd (clip.cpp guesses swapped FFN weights)")
    rng = np.random.default_rng(seed)
    n_patches = (image_size // patch_size) ** 2

    def normal(std: float, *shape: int) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    tensors: dict[str, np.ndarray] = {
        "v.patch_embd.weight": normal(
            1.0 / np.sqrt(3 * patch_size**2), n_embd, 3, patch_size, patch_size
        ),
        "v.patch_embd.bias": normal(0.02, n_embd),
        "v.position_embd.weight": normal(0.5, n_patches, n_embd),
        "v.pre_ln.weight": np.ones(n_embd, np.float32),
        "v.pre_ln.bias": np.zeros(n_embd, np.float32),
    }
    for layer in range(n_layer):
        prefix = f"v.blk.{layer}"
        for norm in ("ln1", "ln2"):
            tensors[f"{prefix}.{norm}.weight"] = np.ones(n_embd, np.float32)
            tensors[f"{prefix}.{norm}.bias"] = np.zeros(n_embd, np.float32)
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{prefix}.{name}.weight"] = normal(1.0 / np.sqrt(n_embd), n_embd, n_embd)
            tensors[f"{prefix}.{name}.bias"] = np.zeros(n_embd, np.float32)
        tensors[f"{prefix}.ffn_up.weight"] = normal(1.0 / np.sqrt(n_embd), n_ff, n_embd)
        tensors[f"{prefix}.ffn_up.bias"] = np.zeros(n_ff, np.float32)
        tensors[f"{prefix}.ffn_down.weight"] = normal(1.0 / np.sqrt(n_ff), n_embd, n_ff)
        tensors[f"{prefix}.ffn_down.bias"] = np.zeros(n_embd, np.float32)
    # the features leave the blocks with a unit-ish scale; GELU keeps about half of it
    tensors["mm.0.weight"] = normal(1.0 / np.sqrt(n_embd), n_embd_text, n_embd)
    tensors["mm.0.bias"] = np.zeros(n_embd_text, np.float32)
    tensors["mm.2.weight"] = normal(
        2.0 * output_scale / np.sqrt(n_embd_text), n_embd_text, n_embd_text
    )
    tensors["mm.2.bias"] = np.zeros(n_embd_text, np.float32)

    writer = gguf.GGUFWriter(str(out), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name("power test projector")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    writer.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_bool(gguf.Keys.ClipVision.USE_GELU, True)
    writer.add_uint32(gguf.Keys.ClipVision.IMAGE_SIZE, image_size)
    writer.add_uint32(gguf.Keys.ClipVision.PATCH_SIZE, patch_size)
    writer.add_uint32(gguf.Keys.ClipVision.EMBEDDING_LENGTH, n_embd)
    writer.add_uint32(gguf.Keys.ClipVision.FEED_FORWARD_LENGTH, n_ff)
    writer.add_uint32(gguf.Keys.ClipVision.BLOCK_COUNT, n_layer)
    writer.add_uint32(gguf.Keys.ClipVision.PROJECTION_DIM, n_embd_text)
    writer.add_uint32(gguf.Keys.ClipVision.Attention.HEAD_COUNT, n_head)
    writer.add_float32(gguf.Keys.ClipVision.Attention.LAYERNORM_EPS, 1e-6)
    writer.add_array(gguf.Keys.ClipVision.IMAGE_MEAN, [0.5, 0.5, 0.5])
    writer.add_array(gguf.Keys.ClipVision.IMAGE_STD, [0.5, 0.5, 0.5])
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def projector_for(model_gguf: Path | str, folder: Path | str, **kwargs) -> Path:
    """A projector for `model_gguf` (its embedding width), cached in `folder` by its settings."""
    from power.registry.gguf_meta import read_gguf_info

    info = read_gguf_info(model_gguf)
    n_embd_text = int(info.embedding_length or 0)
    if n_embd_text <= 0:
        raise ValueError(f"{model_gguf} does not say its embedding length")
    tag = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    out = (
        Path(folder)
        / f"mmproj-{Path(model_gguf).stem}-{n_embd_text}{'-' + tag if tag else ''}.gguf"
    )
    if not out.is_file():
        temp = out.with_suffix(".partial")
        write_projector(temp, n_embd_text, **kwargs)
        temp.rename(out)
    return out


def png_bytes(width: int, height: int, pixel) -> bytes:
    """A PNG image whose pixel (x, y) has the RGB colour `pixel(x, y)` (stdlib only)."""
    import struct
    import zlib

    rows = b"".join(
        b"\x00" + bytes(channel for x in range(width) for channel in pixel(x, y))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
