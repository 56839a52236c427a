"""What a GGUF file says about its model, read from the header only.

`read_gguf_info(path)` parses the key/value section and the tensor descriptions (names, types,
shapes) straight from a memory map and never touches tensor data, so a 500 MB file takes a few
tens of milliseconds: string arrays (the vocabulary) are skipped by their length prefixes and
decoded only when `verbose`. (gguf's `GGUFReader` builds numpy views for every array element
and needs seconds for a 262k-token vocabulary, hence this reader; the `gguf` package still
provides the type tables.)

Derived facts follow Ollama:
- `parameter_count` is the sum of the tensors' element counts; `parameter_size` is Ollama's
  HumanNumber of it ("268.10M", "7B", "1.5B", "494.03M", "999K").
- `quantization_level` is the name of `general.file_type` ("Q4_K_M", "F16", …; "unknown" when
  the key is absent).
- `capabilities`: "embedding" when `<arch>.pooling_type` is present, else "completion";
  "vision" when `<arch>.vision.block_count` is present; "tools" when the chat template mentions
  `tools` or `tool_call`; "thinking" when it has `<think>` and `</think>`; "insert" when the
  vocabulary has fill-in-the-middle tokens (power can build FIM prompts without a template).
- `model_info` is /api/show's map: every key except `general.name` and
  `tokenizer.chat_template`, plus `general.parameter_count`; arrays longer than 5 elements are
  emptied (`[]`) unless `verbose`, as Ollama's docs show.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import attrs
import gguf
import numpy as np

GGUF_MAGIC = b"GGUF"

# GGUF value types
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12

_SCALAR_FORMATS = {
    _UINT8: "B",
    _INT8: "b",
    _UINT16: "H",
    _INT16: "h",
    _UINT32: "I",
    _INT32: "i",
    _FLOAT32: "f",
    _BOOL: "?",
    _UINT64: "Q",
    _INT64: "q",
    _FLOAT64: "d",
}
_NUMPY_TYPES = {
    _UINT8: np.uint8,
    _INT8: np.int8,
    _UINT16: np.uint16,
    _INT16: np.int16,
    _UINT32: np.uint32,
    _INT32: np.int32,
    _FLOAT32: np.float32,
    _BOOL: np.bool_,
    _UINT64: np.uint64,
    _INT64: np.int64,
    _FLOAT64: np.float64,
}

#: Arrays longer than this are shown as [] in /api/show unless verbose.
MAX_SHOWN_ARRAY = 5

#: Fill-in-the-middle token texts (prefix, suffix, middle) that llama.cpp recognises.
FIM_TOKEN_SETS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>"),
    ("<PRE>", "<SUF>", "<MID>"),
    ("\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>"),
    ("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),
)


class GGUFError(ValueError):
    """The file is not a GGUF file or its header is damaged."""


@attrs.frozen
class TensorInfo:
    name: str
    type: str  # ggml type name: "Q4_K", "F32", …
    shape: tuple[int, ...]

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@attrs.frozen
class GGUFInfo:
    """The facts power needs about one GGUF file (see the module docstring for the rules)."""

    path: Path
    version: int
    kind: str  # general.type: "model", "adapter", "projector", …
    architecture: str
    parameter_count: int
    file_type: int | None
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None
    pooling_type: int | None
    has_fim_tokens: bool
    is_projector: bool
    tensor_bytes: int
    capabilities: list[str]
    model_info: dict[str, Any]
    tensors: list[TensorInfo] = attrs.field(repr=False)

    @property
    def family(self) -> str:
        return self.architecture

    @property
    def families(self) -> list[str]:
        return [self.architecture]

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    @property
    def quantization_level(self) -> str:
        return file_type_name(self.file_type)

    @property
    def bits_per_weight(self) -> float:
        if self.parameter_count <= 0:
            return 0.0
        return self.tensor_bytes * 8 / self.parameter_count

    @property
    def is_embedding(self) -> bool:
        return self.pooling_type is not None

    @property
    def has_pooling(self) -> bool:
        return self.pooling_type is not None

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value by its full key (arrays as shown in `model_info`)."""
        return self.model_info.get(key, default)


def human_number(count: int) -> str:
    """Ollama's HumanNumber: 7000000000 → "7B", 1500000000 → "1.5B", 268098176 → "268.10M",
    5000000 → "5M", 999000 → "999K", 999 → "999"."""
    if count >= 1_000_000_000:
        value = count / 1_000_000_000
        return f"{value:.0f}B" if value == int(value) else f"{value:.1f}B"
    if count >= 1_000_000:
        value = count / 1_000_000
        return f"{value:.0f}M" if value == int(value) else f"{value:.2f}M"
    if count >= 1_000:
        return f"{count / 1_000:.0f}K"
    return str(count)


def file_type_name(file_type: int | None) -> str:
    """`general.file_type` as Ollama names it ("Q4_K_M", "F16", "F32" …), "unknown" if absent."""
    if file_type is None:
        return "unknown"
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return "unknown"
    if name == "GUESSED":
        return "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def file_type_from_name(name: str) -> int:
    """The llama.cpp file type number of a quantization name ("q4_K_M", "Q8_0", "f16" …);
    "Q4_K" means Q4_K_M as in Ollama. Raises ValueError for unknown names."""
    wanted = name.strip().upper()
    if wanted == "Q4_K":
        wanted = "Q4_K_M"
    for member in gguf.LlamaFileType:
        if member.name in (f"MOSTLY_{wanted}", f"ALL_{wanted}"):
            return member.value
    raise ValueError(f"unsupported quantization type {name}")


def _shortest_float32(value: float) -> float:
    """A float32 value as the float of its shortest decimal form (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


class _HeaderReader:
    """Sequential reader over a memory-mapped GGUF header."""

    def __init__(self, buffer: mmap.mmap, byte_order: str, version: int) -> None:
        self.buffer = buffer
        self.byte_order = byte_order
        self.offset = 0
        self.count_format = "I" if version == 1 else "Q"
        self.count_size = 4 if version == 1 else 8

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise GGUFError("the GGUF header is truncated")
        (value,) = struct.unpack_from(self.byte_order + fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def count(self) -> int:
        return self.scalar(self.count_format)

    def string(self) -> str:
        length = self.count()
        end = self.offset + length
        if end > len(self.buffer):
            raise GGUFError("the GGUF header is truncated")
        value = self.buffer[self.offset : end].decode("utf-8", errors="replace")
        self.offset = end
        return value

    def skip_strings(self, n_items: int) -> None:
        buffer, offset, fmt, size = (
            self.buffer,
            self.offset,
            self.byte_order + self.count_format,
            self.count_size,
        )
        unpack = struct.unpack_from
        for _ in range(n_items):
            (length,) = unpack(fmt, buffer, offset)
            offset += size + length
        if offset > len(buffer):
            raise GGUFError("the GGUF header is truncated")
        self.offset = offset

    def value(self, value_type: int, keep_arrays: bool) -> tuple[Any, tuple[int, int] | None]:
        """(value, (start, end) of an array's bytes or None). Arrays not kept are None."""
        if value_type == _STRING:
            return self.string(), None
        if value_type in _SCALAR_FORMATS:
            value = self.scalar(_SCALAR_FORMATS[value_type])
            if value_type == _FLOAT32:
                value = _shortest_float32(value)
            return value, None
        if value_type != _ARRAY:
            raise GGUFError(f"unknown GGUF value type {value_type}")
        item_type = self.scalar("I")
        n_items = self.count()
        start = self.offset
        if item_type == _STRING:
            if keep_arrays:
                value = [self.string() for _ in range(n_items)]
            else:
                self.skip_strings(n_items)
                value = None
            return value, (start, self.offset)
        if item_type == _ARRAY:
            items = [self.value(_ARRAY, keep_arrays)[0] for _ in range(n_items)]
            return (items if keep_arrays else None), (start, self.offset)
        if item_type not in _NUMPY_TYPES:
            raise GGUFError(f"unknown GGUF array type {item_type}")
        dtype = np.dtype(_NUMPY_TYPES[item_type]).newbyteorder(self.byte_order)
        end = start + n_items * dtype.itemsize
        if end > len(self.buffer):
            raise GGUFError("the GGUF header is truncated")
        value = None
        if keep_arrays:
            array = np.frombuffer(self.buffer, dtype=dtype, count=n_items, offset=start)
            value = (
                [_shortest_float32(x) for x in array] if item_type == _FLOAT32 else array.tolist()
            )
        self.offset = end
        return value, (start, end)


def read_gguf_info(path: Path | str, verbose: bool = False) -> GGUFInfo:
    """Read the header of the GGUF file at `path`. Raises GGUFError when it is not GGUF."""
    path = Path(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < 24:
            raise GGUFError(f"{path.name} is not a GGUF file")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            try:
                return _parse(path, buffer, verbose)
            except (struct.error, IndexError, OverflowError, MemoryError) as error:
                raise GGUFError(f"{path.name}: damaged GGUF header ({error})") from None


def _parse(path: Path, buffer: mmap.mmap, verbose: bool) -> GGUFInfo:
    if buffer[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path.name} is not a GGUF file")
    (version,) = struct.unpack_from("<I", buffer, 4)
    byte_order = "<"
    if version > 0xFFFF:  # a big-endian file
        byte_order = ">"
        (version,) = struct.unpack_from(">I", buffer, 4)
    if version not in (1, 2, 3):
        raise GGUFError(f"{path.name}: unsupported GGUF version {version}")
    reader = _HeaderReader(buffer, byte_order, version)
    reader.offset = 8
    n_tensors = reader.count()
    n_kv = reader.count()

    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    token_bytes: tuple[int, int] | None = None
    for _ in range(n_kv):
        key = reader.string()
        value_type = reader.scalar("I")
        if value_type == _ARRAY:
            # peek the length for the /api/show rule, then read (or skip) the items
            saved = reader.offset
            reader.scalar("I")
            array_lengths[key] = reader.count()
            reader.offset = saved
        keep = verbose or array_lengths.get(key, 0) <= MAX_SHOWN_ARRAY
        value, span = reader.value(value_type, keep_arrays=keep)
        if key == "tokenizer.ggml.tokens":
            token_bytes = span
        metadata[key] = value

    tensors = []
    parameter_count = 0
    tensor_bytes = 0
    for _ in range(n_tensors):
        name = reader.string()
        n_dims = reader.scalar("I")
        shape = tuple(reader.count() for _ in range(n_dims))
        type_id = reader.scalar("I")
        reader.scalar("Q")  # offset of the data
        try:
            quant_type = gguf.GGMLQuantizationType(type_id)
            type_name = quant_type.name
            block_size, type_size = gguf.GGML_QUANT_SIZES[quant_type]
        except (ValueError, KeyError):
            type_name, block_size, type_size = str(type_id), 1, 0
        tensor = TensorInfo(name=name, type=type_name, shape=shape)
        tensors.append(tensor)
        parameter_count += tensor.n_elements
        tensor_bytes += tensor.n_elements // block_size * type_size

    architecture = _as_str(metadata.get("general.architecture")) or "unknown"
    kind = _as_str(metadata.get("general.type")) or "model"

    def arch_key(suffix: str) -> Any:
        return metadata.get(f"{architecture}.{suffix}")

    chat_template = _as_str(metadata.get("tokenizer.chat_template")) or None
    pooling_type = arch_key("pooling_type")
    has_fim = _has_fim_tokens(metadata, buffer, token_bytes, reader)
    file_type = metadata.get("general.file_type")
    block_count = _as_int(arch_key("block_count")) or 0
    is_projector = kind in ("projector", "mmproj") or (
        block_count == 0
        and (
            (_as_int(arch_key("vision.block_count")) or 0) > 0
            or (
                architecture == "clip"
                and bool(arch_key("has_vision_encoder") or arch_key("has_audio_encoder"))
            )
        )
    )

    capabilities: list[str] = []
    capabilities.append("embedding" if pooling_type is not None else "completion")
    if arch_key("vision.block_count") is not None:
        capabilities.append("vision")
    if chat_template and ("tools" in chat_template or "tool_call" in chat_template):
        capabilities.append("tools")
    if has_fim and pooling_type is None:
        capabilities.append("insert")
    if chat_template and "<think>" in chat_template and "</think>" in chat_template:
        capabilities.append("thinking")

    model_info: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        if value is None and key in array_lengths:
            value = []  # a long array, not decoded unless verbose
        model_info[key] = value
    model_info["general.parameter_count"] = parameter_count
    model_info = dict(sorted(model_info.items()))

    return GGUFInfo(
        path=path,
        version=version,
        kind=kind,
        architecture=architecture,
        parameter_count=parameter_count,
        file_type=_as_int(file_type),
        context_length=_as_int(arch_key("context_length")),
        embedding_length=_as_int(arch_key("embedding_length")),
        chat_template=chat_template,
        pooling_type=_as_int(pooling_type),
        has_fim_tokens=has_fim,
        is_projector=is_projector,
        tensor_bytes=tensor_bytes,
        capabilities=capabilities,
        model_info=model_info,
        tensors=tensors,
    )


def _has_fim_tokens(
    metadata: dict[str, Any],
    buffer: mmap.mmap,
    token_bytes: tuple[int, int] | None,
    reader: _HeaderReader,
) -> bool:
    """FIM prefix/suffix/middle token ids in the metadata, or the three texts of one known set
    among the vocabulary (found as exact length-prefixed strings in the token array's bytes)."""
    if all(f"tokenizer.ggml.fim_{part}_token_id" in metadata for part in ("pre", "suf", "mid")):
        return True
    if token_bytes is None:
        return False
    start, end = token_bytes
    fmt = reader.byte_order + reader.count_format
    for token_set in FIM_TOKEN_SETS:
        found = True
        for text in token_set:
            encoded = text.encode("utf-8")
            if buffer.find(struct.pack(fmt, len(encoded)) + encoded, start, end) < 0:
                found = False
                break
        if found:
            return True
    return False


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@functools.lru_cache(maxsize=64)
def _cached(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    return read_gguf_info(path)


def read_gguf_info_cached(path: Path | str) -> GGUFInfo:
    """`read_gguf_info(path)` (not verbose), remembered per (path, size, mtime): blobs are
    immutable, so the server reads each model's header once."""
    stat = os.stat(path)
    return _cached(str(path), stat.st_size, stat.st_mtime_ns)


def is_gguf_file(path: Path | str) -> bool:
    """The file starts with the GGUF magic."""
    try:
        with open(path, "rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False
