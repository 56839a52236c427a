"""Benchmark of power's inference engine against a bare llama.cpp loop, on gemma-3-270m.

    .venv/bin/python bench/engine.py [--quick] [--profile] [--tokens N] [--repeats R]
        [--max-extra R] [--sizes 1,4,8,16] [--threads 2] [--num-ctx 1024] [--long-prompt 1000]
        [--only throughput,ttft,sampling,promptcache] [--system-prompt 2000] [--model PATH]

A benchmark, not a test: it asserts nothing about time. Every figure is a ratio against a
reference measured in the same run, and each ends in one `SUMMARY ...` line so that two commits
can be compared with `grep SUMMARY`. About a minute on an idle 2-core machine.

The machine is noisy (2 cores shared with other work): reference and engine runs alternate,
each measurement runs `--repeats` times (2 by default, 1 with `--quick`) and the best is kept.
Each throughput run also reports its CPU share (process CPU time / (wall time x threads));
llama.cpp's threads spin while they wait, so an undisturbed run shows 97-100%. When a side's
best run is below 90%, up to `--max-extra` more pairs run, and a figure that stays below is
marked "disturbed" (other work took the cores; llama.cpp then slows down 2-20 times, far more
than the CPU share suggests, because its threads wait for each other at every barrier).

What is measured:

1. Throughput, reference: a bare loop over `power.engine.llama` (LlamaModel, LlamaContext,
   Batch) on the engine's own weights and context (`loaded.model`, `loaded.context`, lent
   while the engine's loop is idle and cleared afterwards; see `engine_and_reference`), so the
   context parameters are power's (`LoadedModel._open_sync`: kv_unified, n_ctx = num_ctx x N,
   n_batch 512, the same threads): N distinct prompts evaluated in one batch, then one batch
   of N tokens per step, greedy numpy argmax. A sequence stops at an end-of-generation token,
   as in the engine. Each run's prompts start with "Take <run>.". The whole loop runs in a trio
   worker thread, as the engine's decodes do (see `in_worker` for why that matters here).
2. Throughput, engine: `power.engine.load(..., num_parallel=N)` and N concurrent greedy
   generations (temperature 0, repeat_penalty 1, num_predict fixed) under trio, same prompts.
   Both sides are timed from the moment every prompt has been evaluated and its first token
   sampled (reference: after the argmax of the prompt batch; engine: when the last of the N
   consumers has received its first token) to the last token (reference: the last argmax;
   engine: the last consumer receiving its final chunk). Tokens counted are those produced
   inside that window: the engine's count excludes, per generation, the tokens its consumer had
   received by the window's start. So both count (tokens - 1) decode steps of N tokens, and the
   engine's figure includes what it costs to hand tokens to trio consumers.
3. Time to first token for a ~1,000-token prompt (engine, num_parallel 1): cold (the cache
   is empty) and cached (the same prompt plus a few new tokens, so the slot's KV cells are
   reused), from the call to `generate` to the first chunk. Both are also compared with the bare loop: a cold prompt decode (512-token chunks,
   argmax), and the decode of the few new tokens on top of the prompt's cells.
4. Time to first token with a 2,000-token system prompt and a new question: cold, cached in
   memory (the slot's cells), and restored from the persistent prompt cache after a new load
   (`bench/engine_promptcache.py`), as ratios to cold measured in the same run.
5. Sampling cost of `SequenceSampler` per token (sample + accept, + logprobs where named) on
   real gemma logits rows (262,144 entries), median of many calls, in ms (its SUMMARY value;
   the ratio to a numpy argmax of the same rows is given beside it).

`--profile` adds a breakdown of the engine's step at each N (decode, sampling, the
thread hops, commit, the loop's own bookkeeping) next to the reference's decode/argmax split.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import attrs
import llama_cpp
import numpy as np
import trio
from docopt import docopt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402  (bench/common.py)
    N_BATCH,
    PROMPTS,
    decode_or_raise,
    greedy_options,
    print_summary,
)
from engine_promptcache import bench_prompt_cache  # noqa: E402  (bench/engine_promptcache.py)
from engine_sampling import bench_sampling  # noqa: E402  (bench/engine_sampling.py)

from power.engine import GenerationParams, LoadedModel, load  # noqa: E402
from power.engine.llama import Batch, LlamaContext, LlamaModel  # noqa: E402
from power.engine.scheduler import SlotState, StepPlan  # noqa: E402
from power.options import Options  # noqa: E402

T = TypeVar("T")

DEFAULT_MODEL = ROOT / ".models" / "gemma-3-270m-q4_k_m.gguf"
#: Below this CPU share (see `Throughput.cpu_share`) a run is reported as disturbed.
CPU_SHARE_OK = 0.9

#: Openings of the long prompts for time to first token (differ from the first token on).
LONG_OPENINGS = ["Chapter one.", "Prologue:", "Report of the survey team.", "Letters home,"]
LONG_BODY = (
    " The river ran along the valley for many miles before it reached the sea, and the people"
    " who lived on its banks fished, farmed and traded with the towns downstream. Every spring"
    " the water rose and covered the lower fields, leaving behind a layer of rich mud in which"
    " the next crop grew tall. The elders kept a record of each flood, carved into a wooden"
    " post near the market square: a notch for the height, a mark for the year, and sometimes"
    " a word about what had been lost."
)
CACHED_SUFFIX = " What happened next was"


# ---------------------------------------------------------------------- machine


def print_machine(model_path: Path, threads: int) -> None:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = "?"
    load1, load5, _ = os.getloadavg()
    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({affinity} usable), "
        f"load average {load1:.2f} (1 min) {load5:.2f} (5 min)"
    )
    print(
        f"python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}, "
        f"numpy {np.__version__}, trio {trio.__version__}, power commit {commit or '?'}"
    )
    print(f"llama.cpp: {system_info}")
    print(f"model: {model_path.name}, threads {threads}")
    omp = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_"))}
    if omp:
        print(f"OpenMP environment: {omp}")
    busy = cpu_busy_share()
    if busy is not None:
        print(f"other work before starting: {busy:.0%} of the CPUs busy (over 0.5 s)")
        if busy > 0.2:
            print("note: other work shares the cores; absolute figures will be disturbed")
    print(flush=True)


def cpu_busy_share(seconds: float = 0.5) -> float | None:
    """The share of all CPUs busy over `seconds` (this process sleeps meanwhile), from
    /proc/stat; None where that is not available."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return 1.0 - (idle1 - idle0) / (total1 - total0)


# ---------------------------------------------------------------------- reference


@attrs.define
class RefStep:
    """Where the reference's generation steps spend their time (seconds, summed)."""

    n_steps: int = 0
    build: float = 0.0
    decode: float = 0.0
    argmax: float = 0.0


@attrs.frozen
class Throughput:
    tokens: int
    seconds: float
    prompt_seconds: float
    cpu_seconds: float  # the process's CPU time inside the timed window, all threads

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def cpu_share(self, threads: int) -> float:
        """CPU time over wall time x threads: near 1 when the run had its cores to itself
        (llama.cpp's threads spin while they wait), well below when other work took them."""
        return self.cpu_seconds / (self.seconds * threads) if self.seconds > 0 else 0.0

    def describe(self, threads: int) -> str:
        return f"{self.rate:.1f} (cpu {self.cpu_share(threads):.0%})"


def reference_run(
    model: LlamaModel,
    context: LlamaContext,
    batch: Batch,
    prompts: list[list[int]],
    n_tokens: int,
    profile: RefStep | None = None,
) -> Throughput:
    """Greedy-decode `n_tokens` per prompt, all sequences in one batch per step."""
    context.clear()
    n = len(prompts)
    t_start = time.perf_counter()
    batch.clear()
    rows = [batch.add(seq, tokens, 0, True) for seq, tokens in enumerate(prompts)]
    decode_or_raise(context, batch)
    next_token = [int(np.argmax(context.logits_row(row))) for row in rows]
    position = [len(tokens) for tokens in prompts]
    generated = [1] * n
    active = [seq for seq in range(n) if not model.is_eog(next_token[seq])]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    tokens_in_window = 0
    seq_rows = batch.raw.seq_id
    while active:
        t_build = time.perf_counter()
        k = len(active)
        batch.token[:k] = [next_token[seq] for seq in active]
        batch.pos[:k] = [position[seq] for seq in active]
        batch.n_seq_id[:k] = 1
        batch.logits[:k] = 1
        for i, seq in enumerate(active):
            seq_rows[i][0] = seq
        batch.n_tokens = k
        batch.raw.n_tokens = k
        t_decode = time.perf_counter()
        decode_or_raise(context, batch)
        t_argmax = time.perf_counter()
        still = []
        for i, seq in enumerate(active):
            token = int(np.argmax(context.logits_row(i)))
            position[seq] += 1
            generated[seq] += 1
            tokens_in_window += 1
            next_token[seq] = token
            if not model.is_eog(token) and generated[seq] < n_tokens:
                still.append(seq)
        active = still
        t_end = time.perf_counter()
        if profile is not None:
            profile.n_steps += 1
            profile.build += t_decode - t_build
            profile.decode += t_argmax - t_decode
            profile.argmax += t_end - t_argmax
    t1 = time.perf_counter()
    return Throughput(tokens_in_window, t1 - t0, t0 - t_start, time.process_time() - cpu0)


async def in_worker(fn: Callable[..., T], *args: object) -> T:
    """Run a whole reference measurement in a trio worker thread, the kind of thread (and, from
    trio's thread cache, usually the very thread) in which the engine runs `llama_decode`.

    This matters here: llama.cpp's CPU backend is built with OpenMP, and on a machine whose
    cores were busy with other work the same decode loop ran 2-5 times slower on the main
    thread than in a worker thread; GOMP_SPINCOUNT=1000 closed most of the gap, so libgomp's
    spin-waiting is the likely cause. On idle cores both ran alike. One step's hop into the
    thread is not part of the reference: the whole loop runs there."""
    return await trio.to_thread.run_sync(lambda: fn(*args))


def reference_prompt_seconds(
    context: LlamaContext, batch: Batch, prompt: list[int], suffix: list[int] | None = None
) -> tuple[float, float]:
    """A bare cold prompt evaluation (512-token chunks, then the argmax of the last row), and
    the time to evaluate `suffix` on top of it (its cells already there) and take the argmax."""
    context.clear()

    def evaluate(tokens: list[int], start_pos: int) -> None:
        for start in range(0, len(tokens), N_BATCH):
            chunk = tokens[start : start + N_BATCH]
            batch.clear()
            last = start + len(chunk) == len(tokens)
            row = batch.add(0, chunk, start_pos + start, last)
            decode_or_raise(context, batch)
        int(np.argmax(context.logits_row(row)))

    t0 = time.perf_counter()
    evaluate(prompt, 0)
    t1 = time.perf_counter()
    if suffix:
        evaluate(suffix, len(prompt))
    return t1 - t0, time.perf_counter() - t1


# ---------------------------------------------------------------------- engine


@attrs.define
class EngineStep:
    """Where the engine's steps spend their time (seconds, summed), from wrapped methods."""

    n_steps: int = 0
    execute: float = 0.0  # the worker thread's whole `_execute`
    build: float = 0.0  # batch filling before `llama_decode`
    decode: float = 0.0
    commit: float = 0.0
    # `_execute` returned -> `_commit` starts: the thread -> trio hop, plus `_sample_costly`
    # when a sequence has a costly sampler (none here: every generation is greedy)
    hop_back: float = 0.0
    loop: float = 0.0  # `_commit` ended -> next plan made (reap, admit, shift, plan)
    hop_out: float = 0.0  # plan made -> `_execute` starts (trio -> thread; other tasks run)
    wall: float = 0.0  # previous `_commit` end -> this `_commit` end


def instrument(model: LoadedModel, profile: EngineStep) -> Callable[[], None]:
    """Wrap the runner's `_execute`/`_commit`, its scheduler's `plan` and the context's
    `decode` with timers. Only steps that decode nothing but generated tokens (no prompt
    chunk), and that follow another step, are added to `profile`, so that it compares with the
    reference's generation steps. Returns a function that removes the wrappers."""
    runner = model.runner
    assert runner is not None, "an embedding model has no step loop"
    context = model.context
    scheduler = runner.scheduler
    execute, commit, decode, plan = runner._execute, runner._commit, context.decode, scheduler.plan
    step: dict[str, float] = {}
    last_commit_end: list[float | None] = [None]
    generation_only = [False]

    def timed_plan() -> StepPlan:
        made = plan()
        step.clear()
        step["plan_end"] = time.perf_counter()
        generation_only[0] = all(entry.slot.state is SlotState.GENERATING for entry in made.entries)
        return made

    def timed_decode(batch: Batch) -> int:
        step["decode_start"] = time.perf_counter()
        try:
            return decode(batch)
        finally:
            step["decode_end"] = time.perf_counter()

    def timed_execute(plan: StepPlan) -> object:
        step["execute_start"] = time.perf_counter()
        try:
            return execute(plan)
        finally:
            step["execute_end"] = time.perf_counter()

    def timed_commit(plan: StepPlan, sampled: object) -> None:
        step["commit_start"] = time.perf_counter()
        try:
            commit(plan, sampled)
        finally:
            end = time.perf_counter()
            previous, last_commit_end[0] = last_commit_end[0], end
            if generation_only[0] and previous is not None and "decode_start" in step:
                profile.n_steps += 1
                profile.loop += step["plan_end"] - previous
                profile.hop_out += step["execute_start"] - step["plan_end"]
                profile.build += step["decode_start"] - step["execute_start"]
                profile.decode += step["decode_end"] - step["decode_start"]
                profile.execute += step["execute_end"] - step["execute_start"]
                profile.hop_back += step["commit_start"] - step["execute_end"]
                profile.commit += end - step["commit_start"]
                profile.wall += end - previous

    runner._execute, runner._commit, context.decode = timed_execute, timed_commit, timed_decode
    scheduler.plan = timed_plan

    def remove() -> None:
        del runner._execute, runner._commit, context.decode, scheduler.plan

    return remove


async def engine_run(model: LoadedModel, prompts: list[list[int]], n_tokens: int) -> Throughput:
    """N concurrent greedy generations; see the module docstring for the timing window."""
    n = len(prompts)
    # (time, tokens so far, process CPU time) at each chunk a consumer receives
    arrivals: list[list[tuple[float, int, float]]] = [[] for _ in range(n)]
    finals: list[int] = [0] * n
    options = greedy_options(num_predict=n_tokens)

    async def one(i: int) -> None:
        params = GenerationParams(prompt=tuple(prompts[i]), options=options)
        count = 0
        async with contextlib.aclosing(model.generate(params)) as stream:
            async for chunk in stream:
                now, cpu = time.perf_counter(), time.process_time()
                count += len(chunk.token_ids)
                arrivals[i].append((now, count, cpu))
                if chunk.done:
                    finals[i] = chunk.eval_count
                    return

    t_start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    t0, _, cpu0 = max(next(a for a in arrival if a[1] > 0) for arrival in arrivals)
    t1, _, cpu1 = max(arrival[-1] for arrival in arrivals)
    before = 0
    for arrival in arrivals:
        before += max((c for t, c, _ in arrival if t <= t0), default=0)
    return Throughput(sum(finals) - before, t1 - t0, t0 - t_start, cpu1 - cpu0)


@attrs.define
class Paired:
    """The runs of one N: reference and engine, alternated; the step profiles of the last pair."""

    refs: list[Throughput] = attrs.field(factory=list)
    engines: list[Throughput] = attrs.field(factory=list)
    ref_profile: RefStep | None = None
    engine_profile: EngineStep | None = None

    def settled(self, threads: int) -> bool:
        """Both sides have a best run that had its cores (see `Throughput.cpu_share`)."""
        if not self.refs or not self.engines:
            return False
        ref = max(self.refs, key=lambda t: t.rate)
        eng = max(self.engines, key=lambda t: t.rate)
        return min(ref.cpu_share(threads), eng.cpu_share(threads)) >= CPU_SHARE_OK


@contextlib.asynccontextmanager
async def engine_and_reference(
    path: Path, num_ctx: int, n_seq: int, threads: int
) -> AsyncIterator[tuple[LoadedModel, Callable[[], contextlib.AbstractContextManager[None]]]]:
    """power's engine loaded with `num_parallel=n_seq`, and `borrowed()`: a context manager
    that lends the engine's own llama.cpp context (and weights) to the reference loop.

    Two contexts opened alike still ran the same prompt up to 9% apart (where their buffers
    land in memory), so the reference runs on the engine's very context, while the engine's
    loop is idle. Afterwards the context is cleared and every slot forgets its cached cells,
    so the engine's next request starts from an empty cache as the reference did."""
    options = Options(num_ctx=num_ctx, num_thread=threads)
    async with load(path, options, num_parallel=n_seq) as loaded:
        runner = loaded.runner
        assert runner is not None, "an embedding model has no step loop"

        @contextlib.contextmanager
        def borrowed() -> Iterator[None]:
            assert loaded.n_active == 0 and loaded.n_waiting == 0, "the engine is busy"
            loaded.context.clear()
            try:
                yield
            finally:
                loaded.context.clear()
                for slot in runner.scheduler.slots:
                    runner.scheduler.forget(slot)

        yield loaded, borrowed


async def paired_throughput(
    path: Path,
    warm_up: list[list[int]],
    make_prompts: Callable[[int], list[list[int]]],
    n_tokens: int,
    num_ctx: int,
    threads: int,
    repeats: int,
    max_extra: int,
    profile: bool,
) -> Paired:
    """Alternate reference and engine runs (ref, engine, ref, engine...) so that both see the
    same background load: `repeats` pairs, then up to `max_extra` more while a side's best run
    looks disturbed. `make_prompts(r)` gives run r's prompts. The reference runs (in a worker
    thread, see `in_worker`) while the engine's loop is idle."""
    out = Paired()
    n = len(warm_up)
    batch = Batch(N_BATCH, 1)
    async with engine_and_reference(path, num_ctx, n, threads) as (model, borrowed):
        weights, context = model.model, model.context
        with borrowed():
            await in_worker(reference_run, weights, context, batch, warm_up, 4)
        await engine_run(model, warm_up, 4)
        r = 0
        while r < repeats or (r < repeats + max_extra and not out.settled(threads)):
            prompts = make_prompts(r)
            ref_profile = RefStep() if profile else None
            with borrowed():
                out.refs.append(
                    await in_worker(
                        reference_run, weights, context, batch, prompts, n_tokens, ref_profile
                    )
                )
            engine_profile = EngineStep() if profile else None
            remove = instrument(model, engine_profile) if engine_profile else None
            try:
                out.engines.append(await engine_run(model, prompts, n_tokens))
            finally:
                if remove is not None:
                    remove()
            out.ref_profile, out.engine_profile = ref_profile, engine_profile
            r += 1
    batch.close()
    return out


async def paired_ttft(
    path: Path,
    long_prompts: list[list[int]],
    suffix: list[int],
    num_ctx: int,
    threads: int,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """For each long prompt: the bare loop's (cold, cached) prompt decode, then the engine's
    (cold, cached) time to first chunk, one slot. Interleaved so that both see the same
    background load."""
    refs: list[tuple[float, float]] = []
    pairs: list[tuple[float, float]] = []

    async def first_chunk(model: LoadedModel, tokens: list[int]) -> float:
        params = GenerationParams(prompt=tuple(tokens), options=greedy_options(num_predict=1))
        t0 = time.perf_counter()
        async with contextlib.aclosing(model.generate(params)) as stream:
            async for _chunk in stream:
                elapsed = time.perf_counter() - t0
                break
        return elapsed

    batch = Batch(N_BATCH, 1)
    async with engine_and_reference(path, num_ctx, 1, threads) as (model, borrowed):
        context = model.context
        with borrowed():
            await in_worker(reference_prompt_seconds, context, batch, long_prompts[-1][:64])
        await first_chunk(model, long_prompts[-1][:64])  # warm-up
        for tokens in long_prompts:
            with borrowed():
                refs.append(
                    await in_worker(reference_prompt_seconds, context, batch, tokens, suffix)
                )
            cold = await first_chunk(model, tokens)
            cached = await first_chunk(model, tokens + suffix)
            pairs.append((cold, cached))
    batch.close()
    return refs, pairs


# ---------------------------------------------------------------------- sections


def bench_throughput(model: LlamaModel, args: Args, repeats: int, n_tokens: int) -> None:
    print(
        f"== throughput: greedy, {n_tokens} tokens per sequence, distinct prompts, "
        f"num_ctx {args.num_ctx} per sequence ==",
        flush=True,
    )
    print(
        f"  aggregate generated tokens/s after every prompt is evaluated; best of {repeats} runs"
        f" (up to {0 if args.quick else args.max_extra} more while a best run is disturbed)",
        flush=True,
    )
    print(
        "  both sides run on the engine's context, emptied before each run; prompts "
        '"Take <run>. " + an opening',
        flush=True,
    )
    texts = [
        PROMPTS[i % len(PROMPTS)] if i < len(PROMPTS) else f"Part {i}. {PROMPTS[i % len(PROMPTS)]}"
        for i in range(max(args.sizes))
    ]
    summaries = []
    for n in args.sizes:
        warm_up = [model.tokenize(f"Warm-up {i}.") for i in range(n)]

        def make_prompts(r: int, n: int = n) -> list[list[int]]:
            return [model.tokenize(f"Take {r + 1}. {text}") for text in texts[:n]]

        paired = trio.run(
            paired_throughput,
            args.model,
            warm_up,
            make_prompts,
            n_tokens,
            args.num_ctx,
            args.threads,
            repeats,
            0 if args.quick else args.max_extra,
            args.profile,
        )
        refs, engines = paired.refs, paired.engines
        gc.collect()
        ref = max(refs, key=lambda t: t.rate)
        eng = max(engines, key=lambda t: t.rate)
        ratio = eng.rate / ref.rate
        for label, best_run, all_runs in (("reference", ref, refs), ("engine", eng, engines)):
            print(
                f"  {f'N={n}' if label == 'reference' else '':<5} {label:<9} {best_run.rate:7.1f} "
                f"tok/s  ({best_run.tokens} tokens in {best_run.seconds:.2f} s; runs "
                f"{', '.join(t.describe(args.threads) for t in all_runs)}; prompt phase "
                f"{min(t.prompt_seconds for t in all_runs) * 1e3:.0f} ms, not in the rate)"
            )
        disturbed = min(ref.cpu_share(args.threads), eng.cpu_share(args.threads)) < CPU_SHARE_OK
        print(
            f"        engine/ref {ratio:.2f}"
            + (
                "   (disturbed: a best run had its cores less than 90% of the time)"
                if disturbed
                else ""
            ),
            flush=True,
        )
        if ref.tokens != eng.tokens:
            print("        note: token counts differ (end-of-generation reached on one side)")
        summaries.append((n, ratio, eng.rate, ref.rate, disturbed))
        if paired.ref_profile is not None and paired.engine_profile is not None:
            print_profile(n, paired.ref_profile, paired.engine_profile)
    for n, ratio, eng_rate, ref_rate, disturbed in summaries:
        print_summary(
            f"engine/ref N={n}",
            ratio,
            f"power {eng_rate:.1f} tok/s, reference {ref_rate:.1f} tok/s"
            + ("; disturbed" if disturbed else ""),
        )
    print(flush=True)


def print_profile(n: int, ref: RefStep, eng: EngineStep) -> None:
    """Milliseconds per generation step (prompt steps left out on both sides)."""

    def ms(total: float, steps: int) -> str:
        return f"{total / max(steps, 1) * 1e3:6.2f}"

    ref_total = ref.build + ref.decode + ref.argmax
    sampling = eng.execute - eng.build - eng.decode
    print(f"  profile at N={n}, ms per generation step (last run):")
    print(
        f"    reference ({ref.n_steps} steps): build {ms(ref.build, ref.n_steps)}  "
        f"decode {ms(ref.decode, ref.n_steps)}  argmax {ms(ref.argmax, ref.n_steps)}  "
        f"step {ms(ref_total, ref.n_steps)}"
    )
    print(
        f"    engine    ({eng.n_steps} steps): build {ms(eng.build, eng.n_steps)}  "
        f"decode {ms(eng.decode, eng.n_steps)}  sample {ms(sampling, eng.n_steps)}  "
        f"thread->trio {ms(eng.hop_back, eng.n_steps)}  commit {ms(eng.commit, eng.n_steps)}  "
        f"loop+plan {ms(eng.loop, eng.n_steps)}  trio->thread {ms(eng.hop_out, eng.n_steps)}  "
        f"step {ms(eng.wall, eng.n_steps)}"
    )
    outside = eng.wall - eng.decode
    ref_outside = ref_total - ref.decode
    print(
        f"    outside llama_decode: engine {ms(outside, eng.n_steps)}, reference "
        f"{ms(ref_outside, ref.n_steps)} ms per step",
        flush=True,
    )


def bench_ttft(model: LlamaModel, args: Args, repeats: int) -> None:
    bos = [model.bos] if model.add_bos else []
    long_prompts = []
    for opening in LONG_OPENINGS[: max(repeats, 1) + (0 if args.quick else 1)]:
        tokens = model.tokenize(opening)
        body = model.tokenize(LONG_BODY, add_special=False)
        while len(tokens) < args.long_prompt:
            tokens += body
        long_prompts.append(tokens[: args.long_prompt])
    suffix = model.tokenize(CACHED_SUFFIX, add_special=False)
    assert all(p[: len(bos)] == bos for p in long_prompts)
    num_ctx = max(2048, args.long_prompt * 2)
    print(
        f"== time to first token: {len(long_prompts[0])}-token prompt, num_parallel 1, "
        f"num_ctx {num_ctx}; cached = same prompt + {len(suffix)} new tokens ==",
        flush=True,
    )
    refs, pairs = trio.run(paired_ttft, args.model, long_prompts, suffix, num_ctx, args.threads)

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v * 1e3:.0f}" for v in values)

    cold = min(c for c, _ in pairs)
    cached = min(c for _, c in pairs)
    ref_cold = min(c for c, _ in refs)
    ref_cached = min(c for _, c in refs)
    print(f"  (ms, best of {len(pairs)}; engine: from the call to generate to the first chunk)")
    print(f"  reference cold   {ref_cold * 1e3:8.1f}  (runs {runs([c for c, _ in refs])})")
    print(f"  engine cold      {cold * 1e3:8.1f}  (runs {runs([c for c, _ in pairs])})")
    print(f"  reference cached {ref_cached * 1e3:8.1f}  (runs {runs([c for _, c in refs])})")
    print(
        f"  engine cached    {cached * 1e3:8.1f}  (runs {runs([c for _, c in pairs])})", flush=True
    )
    print_summary(
        "ttft cached/cold", cached / cold, f"cached {cached * 1e3:.1f} ms, cold {cold * 1e3:.1f} ms"
    )
    print_summary(
        "ttft cold engine/ref",
        cold / ref_cold,
        f"engine {cold * 1e3:.1f} ms, bare decode {ref_cold * 1e3:.1f} ms; lower is better",
    )
    print_summary(
        "ttft cached engine/ref",
        cached / ref_cached,
        f"engine {cached * 1e3:.1f} ms, bare decode of the new tokens {ref_cached * 1e3:.1f} ms;"
        " lower is better",
    )
    print(flush=True)


USAGE = """Usage:
  engine.py [options]

Options:
  --model PATH        GGUF file [default: .models/gemma-3-270m-q4_k_m.gguf]
  --threads N         llama.cpp threads [default: 2]
  --tokens N          generated tokens per sequence (default 64, 32 with --quick)
  --repeats N         runs per measurement, best kept (default 2, 1 with --quick)
  --max-extra N       extra runs while a side's best run looks disturbed [default: 2]
  --sizes LIST        numbers of concurrent sequences [default: 1,4,8,16]
  --num-ctx N         context per sequence [default: 1024]
  --long-prompt N     prompt tokens for time to first token [default: 1000]
  --system-prompt N   system prompt tokens for the prompt cache section [default: 2000]
  --only LIST         sections to run [default: throughput,ttft,promptcache,sampling]
  --quick             fewer tokens and runs
  --profile           break each step down: decode, sampling, thread hops, commit
  -h --help           show this
"""


@attrs.frozen
class Args:
    model: Path
    threads: int
    tokens: int | None
    repeats: int | None
    max_extra: int
    sizes: list[int]
    num_ctx: int
    long_prompt: int
    system_prompt: int
    only: str
    quick: bool
    profile: bool


def parse_args(argv: list[str] | None) -> Args:
    values = docopt(USAGE, argv=argv)
    model = Path(values["--model"])
    return Args(
        model=model if model.is_absolute() else ROOT / model,
        threads=int(values["--threads"]),
        tokens=int(values["--tokens"]) if values["--tokens"] else None,
        repeats=int(values["--repeats"]) if values["--repeats"] else None,
        max_extra=0 if values["--quick"] else int(values["--max-extra"]),
        sizes=[int(x) for x in values["--sizes"].split(",") if x.strip()],
        num_ctx=int(values["--num-ctx"]),
        long_prompt=int(values["--long-prompt"]),
        system_prompt=int(values["--system-prompt"]),
        only=values["--only"],
        quick=bool(values["--quick"]),
        profile=bool(values["--profile"]),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.model.exists():
        sys.exit(f"{args.model} is missing: run `.venv/bin/python scripts/models.py gemma`")
    repeats = args.repeats or (1 if args.quick else 2)
    n_tokens = args.tokens or (32 if args.quick else 64)
    sections = set(args.only.split(","))
    print_machine(args.model, args.threads)
    t_start = time.perf_counter()
    model = LlamaModel(args.model)
    try:
        if "throughput" in sections:
            bench_throughput(model, args, repeats, n_tokens)
        if "ttft" in sections:
            bench_ttft(model, args, repeats)
        if "promptcache" in sections:
            bench_prompt_cache(model, args.model, args.system_prompt, args.threads, repeats)
        if "sampling" in sections:
            bench_sampling(model, args.threads, args.quick)
    finally:
        model.close()
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
