"""Speculative decoding against plain decoding, measured in the same run, on the test models.

    .venv/bin/python bench/speculative.py [--models gemma,qwen] [--tasks edit,free]
        [--streams 1,8] [--tokens 400] [--repeats 2] [--threads 2] [--draft gemma]

A benchmark, not a test: it asserts nothing about time. For each model, task and number of
concurrent streams it runs the same greedy requests with speculation off (`draft_num_predict`
0) and on (the default), alternating, best of `--repeats`, on one loaded model, and prints:

- identical: how many streams produced the same tokens with and without speculation. Solo
  (1 stream), greedy output must be identical. With several streams, llama.cpp's CPU kernels are
  not batch-invariant (NOTES.md): a sequence decoded beside draft tokens sits in a different
  batch, so its logits may differ in the last bits and a near-tie may go the other way.
- tokens/s: generated tokens over the generation window (from the moment every stream has its
  first token to the last one's end, as bench/engine.py measures), and the ratio on/off.
- acceptance: draft tokens accepted / verified.

Tasks: `edit`, the model repeats a given 40-line code block with one change (prompt lookup finds
almost every token in the prompt); `free`, free text (story openings), where lookups rarely
match and speculation must cost (almost) nothing.

The DRAFT case (a draft model proposing the tokens; here the target itself, so acceptance is
near 100 % and every draft token costs a whole decode of the draft model: it shows the
mechanism, not a speed-up) runs the edit task for the models named by `--draft` (gemma by
default; `--draft ""` skips it).
Every figure ends in a `SUMMARY` line for `grep SUMMARY`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPTS, print_summary  # noqa: E402
from power.engine.loadspec import LoadSpec  # noqa: E402
from power.engine.model import LoadedModel  # noqa: E402
from power.engine.speculative import DEFAULT_MAX_DRAFT  # noqa: E402
from power.engine.types import GenerationParams  # noqa: E402
from power.options import Options  # noqa: E402

MODELS_DIR = Path(os.environ.get("POWER_TEST_MODELS", ROOT / ".models"))
MODEL_FILES = {
    "gemma": "gemma-3-270m-q4_k_m.gguf",
    "qwen": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

CODE_BLOCK = '''def load_orders(path):
    """Read the orders file: one order per line, fields separated by commas."""
    orders = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(",")
            if len(fields) != 4:
                raise ValueError(f"line {number}: expected 4 fields, got {len(fields)}")
            customer, item, quantity, price = fields
            orders.append(
                {
                    "customer": customer.strip(),
                    "item": item.strip(),
                    "quantity": int(quantity),
                    "price": float(price),
                }
            )
    return orders


def compute_total(orders, discount=0.0):
    """The total of every order, less the discount (a fraction between 0 and 1)."""
    total = 0.0
    for order in orders:
        total += order["quantity"] * order["price"]
    if not 0.0 <= discount <= 1.0:
        raise ValueError("discount must be between 0 and 1")
    return round(total * (1.0 - discount), 2)


def customers(orders):
    """The customers who ordered something, each once, sorted by name."""
    seen = set()
    for order in orders:
        seen.add(order["customer"])
    return sorted(seen)


def report(orders):
    print(f"{len(orders)} orders from {len(customers(orders))} customers")
    print(f"total: {compute_total(orders):.2f}")
'''

#: One change per stream, so that concurrent streams do not share a prompt.
RENAMES = [
    ("compute_total", "sum_prices"),
    ("load_orders", "read_orders"),
    ("customers", "buyers"),
    ("report", "summary"),
    ("orders", "purchases"),
    ("discount", "rebate"),
    ("fields", "columns"),
    ("handle", "stream"),
]


def edit_prompt(model: str, i: int) -> str:
    old, new = RENAMES[i % len(RENAMES)]
    if model == "qwen":
        return (
            "<|im_start|>system\nYou are a careful code editor.<|im_end|>\n"
            f"<|im_start|>user\nRename `{old}` to `{new}` in this code and output the whole "
            f"code, nothing else.\n```python\n{CODE_BLOCK}```<|im_end|>\n"
            "<|im_start|>assistant\n```python\n"
        )
    return (
        f"Original code:\n```python\n{CODE_BLOCK}```\n\n"
        f"The same code, with `{old}` renamed to `{new}`:\n```python\n"
    )


def free_prompt(model: str, i: int) -> str:
    opening = PROMPTS[i % len(PROMPTS)]
    if model == "qwen":
        return (
            f"<|im_start|>user\nContinue this story for a few paragraphs: {opening}<|im_end|>\n"
            f"<|im_start|>assistant\n{opening}"
        )
    return opening


async def run_streams(
    loaded: LoadedModel, prompts: list[list[int]], n_tokens: int, draft_num_predict: int
) -> tuple[float, int, list[tuple[int, ...]], tuple[int, int]]:
    """Run the prompts concurrently; (window seconds, tokens in the window, outputs, (drafted,
    accepted) during the run)."""
    runner = loaded.runner
    assert runner is not None
    drafted0, accepted0 = runner.n_drafted, runner.n_accepted
    outputs: list[list[int]] = [[] for _ in prompts]
    arrivals: list[list[tuple[float, int]]] = [[] for _ in prompts]  # (time, n tokens)
    options = Options(
        temperature=0.0,
        repeat_penalty=1.0,
        num_predict=n_tokens,
        draft_num_predict=draft_num_predict,
    )

    async def one(i: int) -> None:
        params = GenerationParams(prompt=tuple(prompts[i]), options=options)
        async with contextlib.aclosing(loaded.generate(params)) as stream:
            async for chunk in stream:
                outputs[i].extend(chunk.token_ids)
                arrivals[i].append((time.perf_counter(), len(chunk.token_ids)))

    async with trio.open_nursery() as nursery:
        for i in range(len(prompts)):
            nursery.start_soon(one, i)
    # the window: from the moment every stream has its first token to the last one's end
    start = max(next(t for t, n in a if n) for a in arrivals)
    end = max(a[-1][0] for a in arrivals)
    n_window = sum(n for a in arrivals for t, n in a if t > start)
    return (
        max(end - start, 1e-9),
        n_window,
        [tuple(o) for o in outputs],
        (runner.n_drafted - drafted0, runner.n_accepted - accepted0),
    )


async def compare(
    loaded: LoadedModel,
    label: str,
    prompts: list[list[int]],
    n_tokens: int,
    repeats: int,
) -> None:
    best = {False: 0.0, True: 0.0}
    outs: dict[bool, list[tuple[int, ...]]] = {}
    drafted = accepted = 0
    for _ in range(repeats):
        for on in (False, True):
            seconds, n, outputs, (d, a) = await run_streams(
                loaded, prompts, n_tokens, DEFAULT_MAX_DRAFT if on else 0
            )
            best[on] = max(best[on], n / seconds)
            outs[on] = outputs
            if on:
                drafted, accepted = drafted + d, accepted + a
    same = sum(1 for a, b in zip(outs[False], outs[True], strict=True) if a == b)
    ratio = best[True] / best[False]
    n_out = sum(len(o) for o in outs[True]) / len(prompts)
    acceptance = accepted / drafted if drafted else 0.0
    print(
        f"{label}: identical {same}/{len(prompts)}, plain {best[False]:.1f} tok/s, "
        f"speculative {best[True]:.1f} tok/s, ratio {ratio:.2f}x, acceptance "
        f"{acceptance:.0%} of {drafted // max(repeats, 1)} drafts/run, {n_out:.0f} tokens/stream",
        flush=True,
    )
    print_summary(
        f"speculative {label}",
        ratio,
        f"x plain tok/s; identical {same}/{len(prompts)}; acceptance {acceptance:.0%}",
    )


async def bench_model(args: SimpleNamespace, name: str, *, draft: bool = False) -> None:
    """Every task and stream count on `name`; with `draft`, the model is its own DRAFT model
    (the edit task only)."""
    path = MODELS_DIR / MODEL_FILES[name]
    n_streams = [int(s) for s in args.streams.split(",")]
    spec = LoadSpec.from_options(
        path,
        Options(num_ctx=args.num_ctx, num_thread=args.threads),
        num_parallel=max(n_streams),
    )
    if draft:
        spec = attrs.evolve(spec, draft_path=str(path))
    loaded = await LoadedModel.open(spec)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loaded.run)
            for task in ["edit"] if draft else args.tasks.split(","):
                make = edit_prompt if task == "edit" else free_prompt
                for n in n_streams:
                    prompts = [loaded.tokenize(make(name, i)) for i in range(n)]
                    label = f"{name} {task} x{n}" + (" DRAFT=itself" if draft else "")
                    await compare(loaded, label, prompts, args.tokens, args.repeats)
            nursery.cancel_scope.cancel()
    finally:
        loaded.close()


USAGE = """Usage:
  speculative.py [--models LIST] [--tasks LIST] [--streams LIST] [--tokens N] [--repeats N]
                 [--threads N] [--num-ctx N] [--draft LIST]

Options:
  --models LIST   test models to run [default: gemma,qwen]
  --tasks LIST    edit, free [default: edit,free]
  --streams LIST  concurrent streams [default: 1,8]
  --tokens N      tokens per stream [default: 400]
  --repeats N     runs per side, best kept [default: 2]
  --threads N     llama.cpp threads [default: 2]
  --num-ctx N     context per sequence [default: 2048]
  --draft LIST    models also run as their own DRAFT ("" for none) [default: gemma]
"""


def main() -> None:
    from docopt import docopt

    opts = docopt(USAGE)
    args = SimpleNamespace(
        models=opts["--models"],
        tasks=opts["--tasks"],
        streams=opts["--streams"],
        tokens=int(opts["--tokens"]),
        repeats=int(opts["--repeats"]),
        threads=int(opts["--threads"]),
        num_ctx=int(opts["--num-ctx"]),
        draft=opts["--draft"],
    )
    print(f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads", flush=True)
    for name in args.models.split(","):
        trio.run(bench_model, args, name)
    for name in [n for n in args.draft.split(",") if n]:
        trio.run(functools.partial(bench_model, args, name, draft=True))


if __name__ == "__main__":
    main()
