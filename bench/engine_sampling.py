"""Per-token sampling cost of power's SequenceSampler on real gemma logits (see engine.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import llama_cpp
import numpy as np
from common import N_BATCH, PROMPTS, decode_or_raise, greedy_options, open_context, print_summary

from power.engine.grammar import JSON_GBNF, GrammarConstraint
from power.engine.llama import Batch, LlamaModel
from power.engine.sampling import SequenceSampler, VocabInfo
from power.options import Options


def real_rows(model: LlamaModel, threads: int, n_rows: int) -> list[np.ndarray]:
    """Logits rows of a real greedy decode (copies, 1 MiB each)."""
    context = open_context(model, 512, 1, threads)
    batch = Batch(N_BATCH, 1)
    try:
        prompt = model.tokenize(PROMPTS[0])
        batch.clear()
        row = batch.add(0, prompt, 0, True)
        decode_or_raise(context, batch)
        rows = []
        position = len(prompt)
        for _ in range(n_rows):
            logits = context.logits_row(row).copy()
            rows.append(logits)
            batch.clear()
            row = batch.add(0, [int(np.argmax(logits))], position, True)
            position += 1
            decode_or_raise(context, batch)
        return rows
    finally:
        batch.close()
        context.close()


def time_sampler(
    make: Callable[[], SequenceSampler],
    rows: list[np.ndarray],
    eog: set[int],
    *,
    logprobs: int = 0,
    budget_s: float = 1.5,
    max_calls: int = 300,
) -> tuple[float, int]:
    """Median ms of sample + accept (+ logprobs) per token, and the number of calls timed.
    A new sampler replaces one whose sequence ended (outside the timing)."""
    sampler = make()
    times = []
    t_stop = time.perf_counter() + budget_s
    i = 0
    try:
        while i < max_calls and (i < 20 or time.perf_counter() < t_stop):
            row = rows[i % len(rows)]
            t = time.perf_counter()
            token = sampler.sample(row)
            sampler.accept(token)
            if logprobs:
                sampler.logprobs(row, token, logprobs)
            times.append(time.perf_counter() - t)
            i += 1
            if token in eog:
                sampler.close()
                sampler = make()
    finally:
        sampler.close()
    return statistics.median(times) * 1e3, len(times)


def bench_sampling(model: LlamaModel, threads: int, quick: bool) -> None:
    print("== sampling cost per token (SequenceSampler on real gemma logits rows) ==", flush=True)
    rows = real_rows(model, threads, 16)
    nl = llama_cpp.llama_vocab_nl(model.vocab)
    vocab = VocabInfo(
        n_vocab=model.n_vocab, newline_ids=[nl] if nl >= 0 else [], eog_ids=model.eog_ids
    )
    eog = set(model.eog_ids)
    greedy = greedy_options()
    # the reference point: numpy argmax of a row
    argmax_ms = statistics.median(_timed(lambda r: int(np.argmax(r)), rows, 200)) * 1e3
    print(f"numpy argmax of a {model.n_vocab}-entry row: {argmax_ms:.3f} ms")
    cases: list[tuple[str, Callable[[], SequenceSampler], int]] = [
        ("greedy", lambda: SequenceSampler(greedy, vocab), 0),
        ("greedy+penalty", lambda: SequenceSampler(Options(temperature=0.0), vocab), 0),
        ("default", lambda: SequenceSampler(Options(), vocab), 0),
        ("mirostat1", lambda: SequenceSampler(Options(mirostat=1), vocab), 0),
        ("mirostat2", lambda: SequenceSampler(Options(mirostat=2), vocab), 0),
        ("tfs0.95", lambda: SequenceSampler(Options(tfs_z=0.95), vocab), 0),
        ("tfs0.95-all", lambda: SequenceSampler(Options(tfs_z=0.95, top_k=0, top_p=1.0), vocab), 0),
        ("typical0.9", lambda: SequenceSampler(Options(typical_p=0.9), vocab), 0),
        (
            "typical0.9-all",
            lambda: SequenceSampler(Options(typical_p=0.9, top_k=0, top_p=1.0), vocab),
            0,
        ),
        (
            "json-greedy",
            lambda: SequenceSampler(
                greedy, vocab, grammar=GrammarConstraint(model.vocab, JSON_GBNF)
            ),
            0,
        ),
        (
            "json-default",
            lambda: SequenceSampler(
                Options(), vocab, grammar=GrammarConstraint(model.vocab, JSON_GBNF)
            ),
            0,
        ),
        ("logprobs5", lambda: SequenceSampler(greedy, vocab), 5),
    ]
    budget = 0.6 if quick else 1.5
    print(
        "  (-all: top_k 0 and top_p 1, the whole vocabulary reaches the step; json: format "
        "json's grammar; logprobs5: greedy + logprobs with top 5; default options carry "
        "repeat_penalty 1.1 over the last 64 tokens)"
    )
    for name, make, logprobs in cases:
        ms, calls = time_sampler(make, rows, eog, logprobs=logprobs, budget_s=budget)
        print(f"  {name:<15} {ms:8.3f} ms/token  (median of {calls})", flush=True)
        print_summary(
            f"sampling ms/token {name}",
            ms,
            f"{ms / argmax_ms:.1f} x the numpy argmax of the row, {argmax_ms:.3f} ms",
            digits=3,
        )
    print(flush=True)


def _timed(fn: Callable[[np.ndarray], object], rows: list[np.ndarray], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(rows[i % len(rows)])
        out.append(time.perf_counter() - t)
    return out
