"""Images in a prompt: how they are represented among the token ids, kept whole and evaluated.

A prompt stays a list of ints (the scheduler and the prompt cache compare such lists). An image
occupies one entry per position it takes in the sequence (`ImageChunk.n_pos`; as many as its
embeddings except with M-RoPE), all of them *placeholder ids*: negative numbers derived from the
image's key (a digest of its bytes), an even **start id** followed by odd **continuation ids**::

    [2, 818, 5779, -5216..., -5217..., -5217..., ..., 236881, 107]
                   |  start  |    continuation ...   |

Consequences, all on plain lists:
- the prompt cache and the sharing of a prefix between sequences (`Scheduler.admit`,
  `common_prefix`) stop at the first image that differs, and reuse an identical image's KV cells;
- a boundary that would fall inside an image (a reuse length, a truncation, a context shift) is
  moved to the image's start or end (`span_start`, `span_end`): an image is evaluated whole or not
  at all, never half-cached;
- the scheduler never puts an image in a text batch: text chunks stop before an image start, and
  a sequence whose next pending entry is an image start waits for `Scheduler.plan_image`; the
  runner then encodes that one image and evaluates its embeddings alone in that sequence's cells
  (between two text steps; the other sequences go on in the next one);
- placeholders count as prompt tokens (`prompt_eval_count`), are never sampled, never observed by
  repeat penalties, and are left out of Ollama's `context`.

`GenerationParams.images` maps each start id to its `PromptImage` (the backend's chunk, which the
runner hands to `Projector.encode`). Equal keys mean equal embeddings, so the same image twice
in one prompt is one entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import attrs

from power.engine.backend import ImageChunk
from power.engine.errors import EngineError

__all__ = [
    "ImageError",
    "PromptImage",
    "build_prompt",
    "fit_prompt",
    "is_continuation",
    "is_image_start",
    "placeholder_ids",
    "span_end",
    "span_start",
    "text_run",
]

#: Bits of the key digest that make the placeholder ids (collisions are as likely as ones of
#: a 48-bit hash among the images of one server's prompt cache).
_KEY_BITS = 48


class ImageError(EngineError):
    """An image the projector cannot read, or an image reference without an image (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400)


def placeholder_ids(key: str) -> tuple[int, int]:
    """(start id, continuation id) of an image whose key is `key`: negative, the first even."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[: _KEY_BITS // 8], "big")
    return -(2 * h + 2), -(2 * h + 3)


def is_image_start(token: int) -> bool:
    return token < 0 and token % 2 == 0


def is_continuation(token: int) -> bool:
    return token < 0 and token % 2 == 1


def span_start(tokens: Sequence[int], i: int) -> int:
    """`i` moved back to the start of the image it falls inside (unchanged between images)."""
    while 0 < i < len(tokens) and is_continuation(tokens[i]):
        i -= 1
    return i


def span_end(tokens: Sequence[int], i: int) -> int:
    """`i` moved forward past the image it falls inside (unchanged between images)."""
    while 0 < i < len(tokens) and is_continuation(tokens[i]):
        i += 1
    return i


def text_run(tokens: Sequence[int], limit: int) -> int:
    """How many of the first `limit` entries of `tokens` come before the first image."""
    head = tokens[:limit]
    if not head or min(head) >= 0:  # no image: a C-speed check
        return len(head)
    for i, token in enumerate(head):
        if token < 0:
            return i
    return len(head)  # pragma: no cover


@attrs.frozen(eq=False)
class PromptImage:
    """An image of a prompt: its placeholder ids and the backend's chunk."""

    start_id: int
    continuation_id: int
    chunk: ImageChunk

    @property
    def n_pos(self) -> int:
        return self.chunk.n_pos


def build_prompt(pieces: Iterable[int | ImageChunk]) -> tuple[list[int], tuple[PromptImage, ...]]:
    """Token ids with placeholders, and the images they stand for, from a projector's output."""
    tokens: list[int] = []
    images: dict[int, PromptImage] = {}
    for piece in pieces:
        if isinstance(piece, ImageChunk):
            start, continuation = placeholder_ids(piece.key)
            images.setdefault(start, PromptImage(start, continuation, piece))
            tokens.append(start)
            tokens.extend([continuation] * (piece.n_pos - 1))
        else:
            tokens.append(int(piece))
    return tokens, tuple(images.values())


def check_prompt(prompt: Sequence[int], images: dict[int, PromptImage], n_vocab: int) -> None:
    """Raise EngineError (400) unless every id is in the vocabulary or belongs to a whole
    image of `images` (its start id, then exactly its continuation ids)."""
    i, n = 0, len(prompt)
    while i < n:
        token = prompt[i]
        if 0 <= token < n_vocab:
            i += 1
            continue
        image = images.get(token)
        if image is None:
            raise EngineError("prompt holds a token outside the vocabulary", status=400)
        end = i + image.n_pos
        if end > n or any(t != image.continuation_id for t in prompt[i + 1 : end]):
            raise EngineError("prompt holds an incomplete image", status=400)
        i = end


def fit_prompt(prompt: list[int], limit: int, n_keep: int) -> list[int]:
    """`prompt` cut to `limit` entries: its first `n_keep` and its end, neither cutting an image
    (the kept head ends before an image it would cut; the tail starts after one). The result may
    be shorter than `limit`; it is never longer."""
    n_keep = span_start(prompt, max(0, min(n_keep, limit)))
    tail = span_end(prompt, len(prompt) - (limit - n_keep))
    return prompt[:n_keep] + prompt[tail:]


def text_tokens(tokens: Iterable[int]) -> list[int]:
    """`tokens` without image placeholders (for repeat penalties and Ollama's `context`)."""
    return [t for t in tokens if t >= 0]
