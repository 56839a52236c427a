"""Values that cross the engine's boundary: what a caller asks for and what it gets back."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

from power.engine.errors import ContextLost, DecodeError, EngineError, SamplingError
from power.options import Options

if TYPE_CHECKING:
    from power.engine.multimodal import PromptImage

__all__ = [
    "Chunk",
    "ContextLost",
    "DecodeError",
    "DoneReason",
    "EmbedResult",
    "EngineError",
    "GenerationParams",
    "SamplingError",
    "TokenLogprob",
    "TopLogprob",
]


class DoneReason(enum.StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # num_predict reached or the context is full and cannot shift
    LOAD = "load"
    UNLOAD = "unload"


@attrs.frozen
class TopLogprob:
    token: str
    token_id: int
    logprob: float
    bytes: tuple[int, ...]


@attrs.frozen
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple[TopLogprob, ...] = ()


@attrs.frozen
class GenerationParams:
    """One generation: the prompt as token ids and how to sample the continuation.

    `truncate`: when the prompt does not fit the context, keep its first `num_keep` tokens and its
    end (True), or refuse (False). `shift`: when generation fills the context, drop half of what
    follows `num_keep` and go on (True), or stop with `length` (False). `images`: the images whose
    placeholder ids the prompt holds (see `power.engine.multimodal`), from
    `LoadedModel.tokenize_with_images`.
    """

    prompt: tuple[int, ...]
    options: Options = attrs.field(factory=Options)
    grammar: str | None = None  # GBNF
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True
    shift: bool = True
    images: tuple[PromptImage, ...] = ()


@attrs.frozen
class Chunk:
    """A piece of a generation's output. The last one has `done=True` and the metrics.

    Durations are nanoseconds. `context` (on the last chunk) is the prompt plus every generated
    token, for Ollama's `context` field (images left out: a context holds text only).
    `prompt_eval_count` is the whole prompt, as Ollama reports it (cached tokens included);
    `prompt_cached_count` of those came from the KV cache (a previous turn, or another
    sequence's shared prefix) and were not evaluated again.
    """

    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    done: bool = False
    done_reason: DoneReason | None = None
    prompt_eval_count: int = 0
    prompt_cached_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    context: tuple[int, ...] = ()
    truncated: bool = False
    stop_sequence: str | None = None  # the stop string that ended the generation, if one did

    @property
    def prompt_evaluated_count(self) -> int:
        """Prompt tokens evaluated for this request (the rest came from the cache)."""
        return self.prompt_eval_count - self.prompt_cached_count


@attrs.frozen
class EmbedResult:
    embeddings: list[list[float]]
    prompt_eval_count: int
    duration_ns: int
