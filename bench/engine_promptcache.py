"""Time to first token with a long system prompt: cold, cached in memory, restored from disk.

Part of bench/engine.py (`--only promptcache`). Each round uses a system prompt of
`--system-prompt` tokens (2,000 by default) that no earlier round used, followed by a short
question that changes at every request:

- cold: a fresh load of the model (`power.engine.load`, num_parallel 1) on an empty prompt cache
  folder, first request: the whole prompt is evaluated;
- memory: a second request in the same load: the slot's cells of the system prompt are reused
  (the in-memory prompt cache), only the new question is evaluated;
- restored: the model is unloaded (its slot's cells are saved to the folder), then a new
  `PromptCache` indexes the folder and a new load answers a third question: the system prompt's
  cells are read from the file, checked and restored, then the question is evaluated. The file
  was written moments before, so it is read from the page cache: a cold disk adds its read time
  (the file is about 18 KB per token here).

Each figure is the time from the call to `generate` to its first chunk, best of the rounds; the
ratios restored/cold and memory/cold are measured in the same run.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import trio
from common import greedy_options, print_summary

from power.engine import GenerationParams, LoadedModel, load
from power.engine.llama import LlamaModel
from power.engine.promptcache import PromptCache

SYSTEM_OPENINGS = [
    "You are a careful assistant for a shipping company.",
    "You are the help desk of a public library.",
    "You are a tutor for students of chemistry.",
    "You answer questions about a city's bus network.",
]
SYSTEM_BODY = (
    " Follow the rules below in every answer. Be brief and precise, quote the relevant rule"
    " by its number, never invent a schedule, a price or a name, and say so when the answer is"
    " not in these notes. Rule: parcels under two kilograms travel as letters; rule: the depot"
    " opens at seven and closes at nineteen on weekdays; rule: claims need the receipt number."
)
QUESTIONS = [" Question: when does the depot open?", " Question: how do I file a claim?"]
QUESTIONS += [" Question: what weighs as a letter?"]


async def first_chunk(model: LoadedModel, tokens: list[int]) -> tuple[float, int]:
    """Seconds from the call to `generate` to the first chunk, and the prompt tokens cached."""
    params = GenerationParams(prompt=tuple(tokens), options=greedy_options(num_predict=2))
    t0 = time.perf_counter()
    elapsed = None
    async with contextlib.aclosing(model.generate(params)) as stream:
        async for chunk in stream:
            if elapsed is None:
                elapsed = time.perf_counter() - t0
            if chunk.done:
                return elapsed, chunk.prompt_cached_count
    raise RuntimeError("no final chunk")


async def one_round(
    path: Path, system: list[int], questions: list[list[int]], num_ctx: int, threads: int
) -> tuple[tuple[float, int], tuple[float, int], tuple[float, int], int]:
    options = greedy_options(num_ctx=num_ctx, num_thread=threads)
    with tempfile.TemporaryDirectory(prefix="power-bench-pcache-") as folder:
        cache = PromptCache(folder, max_bytes=4 << 30, min_tokens=256)
        await cache.open()
        async with load(path, options, num_parallel=1, prompt_cache=cache) as model:
            cold = await first_chunk(model, system + questions[0])
            memory = await first_chunk(model, system + questions[1])
        n_bytes = cache.n_bytes // max(1, len(cache.entries))
        cache = PromptCache(folder, max_bytes=4 << 30, min_tokens=256)  # as after a restart
        await cache.open()
        async with load(path, options, num_parallel=1, prompt_cache=cache) as model:
            restored = await first_chunk(model, system + questions[2])
    return cold, memory, restored, n_bytes


def bench_prompt_cache(model: LlamaModel, path: Path, n_system: int, threads: int, rounds: int):
    questions = [model.tokenize(q, add_special=False) for q in QUESTIONS]
    body = model.tokenize(SYSTEM_BODY, add_special=False)
    num_ctx = max(2048, 2 * n_system)
    print(
        f"== time to first token, {n_system}-token system prompt + a new question, "
        f"num_parallel 1, num_ctx {num_ctx}: cold, cached in memory, restored from disk ==",
        flush=True,
    )
    results = []
    for opening in SYSTEM_OPENINGS[:rounds]:
        system = model.tokenize(opening)
        while len(system) < n_system:
            system += body
        system = system[:n_system]
        results.append(trio.run(one_round, path, system, questions, num_ctx, threads))

    def best(i: int) -> float:
        return min(r[i][0] for r in results)

    def runs(i: int) -> str:
        return ", ".join(f"{r[i][0] * 1e3:.0f}" for r in results)

    def cached(i: int) -> str:
        return ", ".join(str(r[i][1]) for r in results)

    cold, memory, restored = best(0), best(1), best(2)
    print(f"  (ms, best of {len(results)}; from the call to generate to the first chunk)")
    for name, i in (("cold", 0), ("memory", 1), ("restored", 2)):
        print(
            f"  {name:9s} {best(i) * 1e3:8.1f}  (runs {runs(i)}; prompt tokens cached {cached(i)})"
        )
    print(
        f"  file: {results[0][3] / 2**20:.1f} MiB for the slot's cells ({n_system} + a few tokens)"
    )
    print_summary(
        "ttft restored/cold",
        restored / cold,
        f"restored from disk {restored * 1e3:.1f} ms, cold {cold * 1e3:.1f} ms",
    )
    print_summary(
        "ttft memory/cold",
        memory / cold,
        f"cached in memory {memory * 1e3:.1f} ms, cold {cold * 1e3:.1f} ms",
    )
    print(flush=True)
