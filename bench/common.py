"""What bench/engine.py and bench/engine_sampling.py share."""

from __future__ import annotations

import llama_cpp

from power.engine.llama import Batch, ContextParams, LlamaContext, LlamaModel
from power.options import Options

N_BATCH = 512  # power's default num_batch

#: Distinct openings, one per sequence (greedy continuations of these run long without EOS).
PROMPTS = [
    "Once upon a time, in a small village at the foot of the mountains, there lived",
    "The history of the Roman Empire begins with the founding of",
    "To bake a good loaf of bread at home, you first need to",
    "The three most important rules of chess that every beginner should know are",
    "In the year 2150, humanity finally reached the outer planets, and",
    "Photosynthesis is the process by which green plants turn sunlight into",
    "Dear diary, today was the strangest day of my life because",
    "The old lighthouse keeper climbed the stairs one last time and saw",
    "A good software engineer writes code that is easy to read, because",
    "The recipe for my grandmother's apple pie starts with",
    "When the detective entered the room, the first thing he noticed was",
    "The Pacific Ocean is the largest ocean on Earth, covering",
    "My favourite memory from childhood is the summer when we",
    "The committee met on Tuesday to discuss the new budget, and",
    "Learning a new language as an adult is hard, but",
    "The spaceship's computer woke the crew from their long sleep to report",
]


def greedy_options(**extra: object) -> Options:
    return Options(temperature=0.0, repeat_penalty=1.0, **extra)


def print_summary(name: str, value: float, detail: str, digits: int = 2) -> None:
    """One line per figure, `SUMMARY <name>: <value> (<detail>)`, for `grep SUMMARY`."""
    print(f"SUMMARY {name}: {value:.{digits}f} ({detail})", flush=True)


def open_context(model: LlamaModel, num_ctx: int, n_seq: int, threads: int) -> LlamaContext:
    """A context exactly as `LoadedModel._open_sync` opens one for a generative model."""
    return LlamaContext(
        model,
        ContextParams(
            n_ctx_per_seq=num_ctx,
            n_seq_max=n_seq,
            n_batch=N_BATCH,
            n_threads=threads,
            n_threads_batch=0,
            flash_attention=None,
            kv_cache_type="f16",
            embeddings=False,
            pooling=llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
            kv_unified=True,
        ),
    )


def decode_or_raise(context: LlamaContext, batch: Batch) -> None:
    status = context.decode(batch)
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status}")
