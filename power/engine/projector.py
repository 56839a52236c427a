"""A model's vision projector through libmtmd (`llama_cpp.mtmd_cpp`): the production `Projector`.

`LlamaProjector` owns one `mtmd_context`, made from a projector GGUF (an "mmproj" file) and the
loaded text model. It

- tokenises a prompt given as parts (text, and image files as bytes) with
  `mtmd_tokenize_from_parts`: image files are decoded by mtmd's helper (stb_image: PNG, JPEG,
  GIF, BMP; WebP through ffmpeg when it is installed), resized and normalised as the projector
  wants, and wrapped in what the model expects around an image (`<start_of_image>`…
  for Gemma 3, `<|vision_start|>`… for Qwen2-VL); no media marker is involved, so a prompt may
  contain any text;
- keeps each image chunk (`mtmd_input_chunk_copy`) in an `ImageChunk` whose handle frees it
  when the chunk is garbage (the chunk holds the preprocessed pixels, not the embeddings);
- encodes a chunk (`mtmd_encode_chunk`) into an `EmbeddingBatch`: the embeddings copied out of
  mtmd's buffer, and the positions, M-RoPE ones when the model uses them.

An image's key is the SHA-256 of its file plus the chunk's ordinal among that file's chunks in
the prompt, so equal keys mean equal embeddings.

Threading: `tokenize` may run in any thread (mtmd's tokenizer only reads the context); `encode`
runs in the step loop's worker thread, one at a time. `close` waits for the calls in progress
(a request may still be decoding its images when the server shuts down). Nothing here knows
trio.

`power.engine.llama_backend.LlamaBackend.open_projector` builds it from a loaded model (this module does
not import `power.engine.llama`: the backend hands over the model handle and its log hooks).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as mtmd

from power.engine.backend import EmbeddingBatch, ImageChunk
from power.engine.errors import DecodeError, EngineError

log = logging.getLogger(__name__)

_TEXT, _IMAGE = mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE

#: File signatures of the images mtmd's helper decodes. Anything else is refused up front: the
#: helper would try it as audio, then hand it to ffprobe as a video.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
#: Where ffmpeg is looked for when a corrupt image falls through to the helper's video path:
#: nowhere (no subprocess for a bad upload). WebP uses ffmpeg from PATH.
_NO_FFMPEG = b"/nonexistent/power-no-ffmpeg"

_log_routed = False


class ProjectorError(RuntimeError):
    """libmtmd refused a projector file."""


def image_format(data: bytes) -> str | None:
    """The image format `data` starts like, among those power reads; None otherwise."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


class LlamaProjector:
    """One mtmd context beside a loaded text model. Frees it in `close()` (idempotent).

    `model_handle` is the loaded `llama_model`; `log_callback` (a ggml log callback kept alive
    by the caller) receives mtmd's log; `reason()` returns llama.cpp's last problems, for error
    messages."""

    def __init__(
        self,
        path: str | Path,
        model_handle: Any,
        *,
        n_threads: int = 0,
        use_gpu: bool = False,
        log_callback: Any = None,
        reason: Callable[[], str] = lambda: "",
    ) -> None:
        global _log_routed
        if log_callback is not None and not _log_routed:
            mtmd.mtmd_helper_log_set(log_callback, ctypes.c_void_p(0))  # mtmd's own log hook
            _log_routed = True
        self._reason = reason
        self._users = 0  # calls in progress; `close` waits for them
        self._idle = threading.Condition()
        self.path = Path(path)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.warmup = False
        if n_threads > 0:
            params.n_threads = n_threads
        self._ctx = mtmd.mtmd_init_from_file(str(self.path).encode(), model_handle, params)
        if not self._ctx:
            raise ProjectorError(f"could not load the vision projector {self.path}{reason()}")
        if not mtmd.mtmd_support_vision(self._ctx):
            mtmd.mtmd_free(self._ctx)
            self._ctx = None
            raise ProjectorError(f"{self.path} is not a vision projector")
        self.n_embd = llama_cpp.llama_model_n_embd_inp(model_handle)
        self.use_mrope = bool(mtmd.mtmd_decode_use_mrope(self._ctx))

    @property
    def handle(self) -> ctypes.c_void_p:
        if not self._ctx:
            raise ProjectorError("projector is closed")
        return self._ctx

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._idle:
            if not self._ctx:
                raise ProjectorError("projector is closed")
            self._users += 1
        try:
            yield
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    # ------------------------------------------------------------------ tokenize
    def tokenize(
        self, parts: Sequence[str | bytes], *, add_special: bool
    ) -> list[int | ImageChunk]:
        """See `power.engine.backend.Projector.tokenize`."""
        with self._in_use():
            return self._tokenize(parts, add_special)

    def _tokenize(self, parts: Sequence[str | bytes], add_special: bool) -> list[int | ImageChunk]:
        keep: list[object] = []  # what C points into, alive until mtmd_tokenize returns
        bitmaps: list[int] = []
        c_parts = []
        digests: list[str] = []
        try:
            n_images = 0
            for part in parts:
                if isinstance(part, str):
                    data = part.encode("utf-8")
                    text = mtmd.mtmd_input_text(data, len(data), add_special, True)
                    keep += [data, text]
                    c_parts.append(mtmd.mtmd_input_part(ctypes.pointer(text), None))
                else:
                    bitmap = self._bitmap(bytes(part), n_images)
                    bitmaps.append(bitmap)
                    digests.append(hashlib.sha256(part).hexdigest())
                    mtmd.mtmd_bitmap_set_id(bitmap, digests[-1].encode())
                    c_parts.append(mtmd.mtmd_input_part(None, bitmap))
                    n_images += 1
            pointers = (ctypes.POINTER(mtmd.mtmd_input_part) * len(c_parts))(
                *[ctypes.pointer(p) for p in c_parts]
            )
            chunks = mtmd.mtmd_input_chunks_init()
            try:
                status = mtmd.mtmd_tokenize_from_parts(
                    self.handle, chunks, pointers, len(c_parts), add_special
                )
                if status != 0:
                    raise EngineError(
                        f"invalid image input: the projector refused the images{self._reason()}",
                        status=400,
                    )
                return self._pieces(chunks)
            finally:
                mtmd.mtmd_input_chunks_free(chunks)
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _bitmap(self, data: bytes, index: int) -> int:
        kind = image_format(data)
        if kind is None:
            raise EngineError(
                f"invalid image input: image {index} is not a PNG, JPEG, GIF, BMP or WebP file",
                status=400,
            )
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        options = mtmd.mtmd_helper_init_opt_default()
        if kind != "WebP":
            options.video_params.ffmpeg_bin_dir = _NO_FFMPEG
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(
            self.handle, buffer, len(data), False, options
        )
        if not bitmap:
            self._reason()  # drop the helper's lines: the message below says it
            raise EngineError(
                f"invalid image input: image {index} ({kind}) could not be decoded", status=400
            )
        return bitmap

    def _pieces(self, chunks: int) -> list[int | ImageChunk]:
        pieces: list[int | ImageChunk] = []
        ordinals: dict[str, int] = {}
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == _TEXT:
                n = ctypes.c_size_t(0)
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                pieces.extend(int(tokens[j]) for j in range(n.value))
            elif kind == _IMAGE:
                digest = (mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode()
                ordinal = ordinals.get(digest, 0)
                ordinals[digest] = ordinal + 1
                pieces.append(self._keep(chunk, f"{digest}:{ordinal}"))
            else:
                raise EngineError("this projector produced a non-image chunk", status=400)
        return pieces

    def _keep(self, chunk: int, key: str) -> ImageChunk:
        owned = mtmd.mtmd_input_chunk_copy(chunk)
        if not owned:
            raise ProjectorError("mtmd could not copy an image chunk")
        image = ImageChunk(
            key=key,
            n_tokens=int(mtmd.mtmd_input_chunk_get_n_tokens(owned)),
            n_pos=int(mtmd.mtmd_input_chunk_get_n_pos(owned)),
            handle=_ChunkHandle(owned),
        )
        return image

    # ------------------------------------------------------------------ encode
    def encode(self, image: ImageChunk, seq_id: int, start_pos: int) -> EmbeddingBatch:
        """See `power.engine.backend.Projector.encode`."""
        with self._in_use():
            return self._encode(image, seq_id, start_pos)

    def _encode(self, image: ImageChunk, seq_id: int, start_pos: int) -> EmbeddingBatch:
        chunk = image.handle.pointer
        if mtmd.mtmd_encode_chunk(self.handle, chunk) != 0:
            raise DecodeError(f"the vision encoder failed{self._reason()}")
        n_tokens = image.n_tokens
        output = mtmd.mtmd_get_output_embd(self.handle)
        embeddings = np.ctypeslib.as_array(output, shape=(n_tokens, self.n_embd)).copy()
        if self.use_mrope:
            tokens = mtmd.mtmd_input_chunk_get_tokens_image(chunk)
            decoder_pos = (mtmd.mtmd_decoder_pos * n_tokens)()
            mtmd.mtmd_helper_image_get_decoder_pos(tokens, start_pos, decoder_pos)
            raw = np.ctypeslib.as_array(decoder_pos).view(np.uint32).reshape(n_tokens, 4)
            # llama.cpp's M-RoPE sections: temporal, then y (row), then x (column), then unused
            positions = np.concatenate([raw[:, 0], raw[:, 2], raw[:, 1], raw[:, 3]])
        else:
            positions = np.arange(start_pos, start_pos + n_tokens)
        return EmbeddingBatch(
            seq_id=seq_id,
            start_pos=start_pos,
            embeddings=embeddings,
            positions=positions.astype(np.int32),
            non_causal=bool(mtmd.mtmd_decode_use_non_causal(self.handle, chunk)),
        )

    def close(self) -> None:
        """Free the mtmd context once the calls in progress have returned (idempotent)."""
        with self._idle:
            context, self._ctx = self._ctx, None  # no new call starts from here on
            while self._users:
                self._idle.wait()
        if context:
            mtmd.mtmd_free(context)


class _ChunkHandle:
    """An owned mtmd chunk, freed when this object is garbage collected."""

    def __init__(self, pointer: int) -> None:
        self.pointer = pointer
        self._finalizer = weakref.finalize(self, mtmd.mtmd_input_chunk_free, pointer)
