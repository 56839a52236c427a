"""A model split over RPC workers against the same model loaded here alone, in the same run.

Starts two `power rpc-worker` processes on loopback ports, then measures gemma-3-270m (greedy,
one sequence, through power's engine) loaded four ways, rounds interleaved so that the noise of a
shared machine hits each alike:

- local: power's usual load (llama.cpp's CPU backend repacks Q4_K weights for its fastest
  kernels: the reference);
- local-plain: the same with the plain CPU kernels, the ones an RPC device computes with;
- split: this machine's CPU, worker 1 and worker 2 in equal shares (6 / 7 / 6 of 19 layers);
- remote: everything on the two workers (0 / 10 / 9), this process only samples.

Prints prompt and generation tokens/s (median of the rounds), the ratios against local and
local-plain, whether the greedy texts agree, and one `SUMMARY` line per ratio. On loopback the
workers share this machine's cores, so a split cannot be faster here: what it measures is what
the RPC hops and the plain kernels cost. About two minutes on an idle 2-core machine.

    .venv/bin/python bench/rpc.py [--rounds 5] [--tokens 64] [--threads N] [--worker-threads N]
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

import models as test_models  # noqa: E402  (scripts/models.py)
from common import PROMPTS, greedy_options, print_summary  # noqa: E402

from power.engine import rpc  # noqa: E402
from power.engine.llama import ModelLoadParams, open_model  # noqa: E402
from power.engine.loadspec import LoadSpec  # noqa: E402
from power.engine.model import LoadedModel  # noqa: E402
from power.options import Options  # noqa: E402

NUM_CTX = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def workers(n: int, threads: int, log_dir: Path) -> Iterator[tuple[str, ...]]:
    """`n` power rpc-worker processes on loopback; yields their endpoints."""
    processes, endpoints = [], []
    try:
        for i in range(n):
            port = free_port()
            log = (log_dir / f"worker-{i}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "power", "rpc-worker", "--port", str(port)]
                    + ["--threads", str(threads)],
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                )
            )
            endpoint = f"127.0.0.1:{port}"
            endpoints.append(endpoint)
            deadline = time.monotonic() + 60
            while rpc.probe(endpoint, timeout=1) is not rpc.WorkerStatus.READY:
                if time.monotonic() > deadline or processes[-1].poll() is not None:
                    raise RuntimeError(f"rpc-worker {endpoint} did not start")
                time.sleep(0.05)
        yield tuple(endpoints)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def local_model(spec: LoadSpec, *, repack: bool) -> LoadedModel:
    """`spec` loaded here alone as power loads it (`open_model`), repacked kernels or not."""
    return LoadedModel(spec, *open_model(spec, ModelLoadParams(cpu_repack=repack)))


async def measure(model: LoadedModel, prompt: str, n_tokens: int) -> tuple[float, float, str]:
    """Prompt tokens/s, generated tokens/s and the text of one greedy generation."""
    parts, final = [], None
    async for chunk in model.generate(prompt, greedy_options(num_predict=n_tokens)):
        parts.append(chunk.text)
        if chunk.done:
            final = chunk
    assert final is not None and final.eval_count == n_tokens, "generation ended early"
    prompt_rate = final.prompt_eval_count / (final.prompt_eval_duration / 1e9)
    return prompt_rate, final.eval_count / (final.eval_duration / 1e9), "".join(parts)


async def run(args: SimpleNamespace) -> None:
    gguf = test_models.gemma()
    spec = LoadSpec.from_options(
        gguf, Options(num_ctx=NUM_CTX, num_thread=args.threads), num_parallel=1
    )
    rates: dict[str, list[tuple[float, float]]] = {}
    texts: dict[tuple[str, int, str], str] = {}
    with tempfile.TemporaryDirectory() as tmp, workers(2, args.worker_threads, Path(tmp)) as eps:
        print(
            f"workers {', '.join(eps)} ({args.worker_threads} threads each), "
            f"power {args.threads} threads, {args.tokens} tokens, {args.rounds} rounds"
        )
        locals_ = {
            "local": local_model(spec, repack=True),
            "local-plain": local_model(spec, repack=False),
        }
        async with trio.open_nursery() as nursery:
            for model in locals_.values():
                await nursery.start(model.run)
            for name, split in (("split", ()), ("remote", (0, 1, 1))):
                t0 = time.perf_counter()
                model = await LoadedModel.open(
                    attrs.evolve(spec, rpc_servers=eps, tensor_split=split)
                )
                placement = ", ".join(f"{s.device} {s.layers}" for s in model.context.placement)
                print(f"{name}: loaded in {time.perf_counter() - t0:.1f}s ({placement})")
                async with trio.open_nursery() as inner:
                    await inner.start(model.run)
                    for i in range(args.rounds):
                        prompt = " ".join([PROMPTS[i % len(PROMPTS)]] * 8) + f" ({name} {i})"
                        for label, each in (*locals_.items(), (name, model)):
                            prompt_rate, rate, text = await measure(each, prompt, args.tokens)
                            rates.setdefault(label, []).append((prompt_rate, rate))
                            texts[name, i, label] = text
                    inner.cancel_scope.cancel()
                model.close()
            nursery.cancel_scope.cancel()
        for model in locals_.values():
            model.close()

    medians = {
        label: (
            statistics.median(p for p, _ in values),
            statistics.median(g for _, g in values),
        )
        for label, values in rates.items()
    }
    for label, (prompt_rate, rate) in medians.items():
        print(f"{label:12s} prompt {prompt_rate:7.1f} tok/s   generation {rate:6.1f} tok/s")
    for label in ("split", "remote"):
        for reference in ("local", "local-plain"):
            ratio = medians[label][1] / medians[reference][1]
            print_summary(
                f"rpc_{label}_vs_{reference}_generation",
                ratio,
                f"{medians[label][1]:.1f} vs {medians[reference][1]:.1f} tok/s",
            )
    for label in ("split", "remote"):
        for reference in ("local-plain", "local"):
            agree = sum(
                texts[label, i, label] == texts[label, i, reference] for i in range(args.rounds)
            )
            print(f"greedy text of {label} equals {reference}: {agree}/{args.rounds} prompts")


USAGE = """Usage:
  rpc.py [--rounds N] [--tokens N] [--threads N] [--worker-threads N]

Options:
  --rounds N          interleaved rounds [default: 5]
  --tokens N          tokens generated per measure [default: 64]
  --threads N         power's threads [default: CORES]
  --worker-threads N  each RPC worker's threads [default: CORES]
"""


def main(argv: list[str] | None = None) -> None:
    from docopt import docopt

    cores = str(os.cpu_count() or 1)
    opts = docopt(USAGE, argv)
    args = SimpleNamespace(
        **{
            key.lstrip("-").replace("-", "_"): int(cores if value == "CORES" else value)
            for key, value in opts.items()
        }
    )
    trio.run(run, args)


if __name__ == "__main__":
    main()
