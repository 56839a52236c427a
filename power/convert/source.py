"""Reading a Hugging Face model folder: config.json and the safetensors weights, without torch.

The weights are read straight from the files through one read-only memory map per file. The
`safetensors` package's numpy loader has no bfloat16 (numpy has no such dtype) and copies whole
tensors; the format is simple enough (an 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then the raw row-major data) that reading it here costs
less than working around that, and it gives bf16 and sharded checkpoints for free.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import attrs
import numpy as np

# safetensors dtype name -> numpy dtype of the stored little-endian values ("BF16" is special).
_NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


class ConversionError(ValueError):
    """The folder cannot be converted: unsupported architecture, missing file, unknown tensor."""


@attrs.frozen
class SourceTensor:
    """One tensor of a safetensors file: where its bytes are and how to read them."""

    name: str
    dtype: str  # safetensors dtype name: "F32", "F16", "BF16", "I64", ...
    shape: tuple[int, ...]
    data: np.ndarray = attrs.field(eq=False, repr=False)  # uint8 view of the memory-mapped bytes

    def read_float32(self) -> np.ndarray:
        """The values as a new float32 array of `shape` (bf16 is widened exactly)."""
        if self.dtype not in _NUMPY_DTYPES:
            raise ConversionError(f"tensor {self.name}: unsupported dtype {self.dtype}")
        raw = self.data.view(np.dtype(_NUMPY_DTYPES[self.dtype]))
        if self.dtype == "BF16":
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.astype(np.float32)
        return values.reshape(self.shape)


def read_safetensors_file(path: Path) -> dict[str, SourceTensor]:
    """The tensors of one `.safetensors` file, memory-mapped (nothing is read until used).
    Raises ConversionError (naming the file, not its folder) when it is not one."""
    size = path.stat().st_size
    with path.open("rb") as f:
        start = f.read(8)
        header_len = struct.unpack("<Q", start)[0] if len(start) == 8 else -1
        if not 0 < header_len <= size - 8:  # an uploaded file may be anything
            raise ConversionError(f"{path.name} is not a safetensors file")
        try:
            header: dict[str, Any] = json.loads(f.read(header_len))
        except ValueError:
            raise ConversionError(f"{path.name}: damaged safetensors header") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path.name}: damaged safetensors header")
    header.pop("__metadata__", None)
    file_map = np.memmap(path, dtype=np.uint8, mode="r")
    data_start = 8 + header_len
    tensors = {}
    try:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            tensors[name] = SourceTensor(
                name=name,
                dtype=info["dtype"],
                shape=tuple(int(d) for d in info["shape"]),
                data=file_map[data_start + begin : data_start + end],
            )
    except (KeyError, TypeError, ValueError):
        raise ConversionError(f"{path.name}: damaged safetensors header") from None
    return tensors


def read_safetensors_folder(folder: Path) -> dict[str, SourceTensor]:
    """All tensors of a checkpoint: the files named by `model.safetensors.index.json`, or every
    `*.safetensors` directly in `folder` (sharded `model-0000x-of-0000n` files included)."""
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"no .safetensors weights in {folder}")
    tensors: dict[str, SourceTensor] = {}
    for file in files:
        tensors.update(read_safetensors_file(file))
    return tensors


@attrs.frozen
class ModelSource:
    """A Hugging Face model folder, opened.

    `folder` holds config.json, the weights and the tokenizer files; `root` is the folder that
    was given (a sentence-transformers root with modules.json and 1_Pooling/ may keep its
    Transformer module in a subfolder); `config` is config.json as written;
    `text_config` is the language model's hyperparameters (`config["text_config"]` for a
    multimodal checkpoint such as Gemma3ForConditionalGeneration, else `config` itself).
    """

    folder: Path
    root: Path
    config: dict[str, Any]
    text_config: dict[str, Any]
    tensors: dict[str, SourceTensor] = attrs.field(repr=False)

    @property
    def architecture(self) -> str:
        """The first entry of `architectures`, or "" when config.json names none."""
        names = self.config.get("architectures") or [""]
        return str(names[0])

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def hparam(self, *keys: str, default: Any = None) -> Any:
        """The first of `keys` present in `text_config` (then `config`), else `default`."""
        for source in (self.text_config, self.config):
            for key in keys:
                if source.get(key) is not None:
                    return source[key]
        return default

    def read_json(self, name: str) -> dict[str, Any] | None:
        """`folder/name` parsed, or None when the file is absent."""
        path = self.folder / name
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))


def _transformer_folder(folder: Path) -> Path:
    """Where a sentence-transformers folder keeps its Transformer module (often the root)."""
    if (folder / "config.json").is_file():
        return folder
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text(encoding="utf-8")):
            if module.get("type", "").endswith(".Transformer"):
                candidate = folder / module.get("path", "")
                if (candidate / "config.json").is_file():
                    return candidate
    raise ConversionError(f"{folder} has no config.json")


def open_model_folder(folder: Path) -> ModelSource:
    """Open a Hugging Face (or sentence-transformers) folder; raises ConversionError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder")
    model_folder = _transformer_folder(folder)
    config = json.loads((model_folder / "config.json").read_text(encoding="utf-8"))
    text_config = config.get("text_config") or config
    return ModelSource(
        folder=model_folder,
        root=folder,
        config=config,
        text_config=text_config,
        tensors=read_safetensors_folder(model_folder),
    )
