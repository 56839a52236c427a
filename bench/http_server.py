"""Benchmark of power's HTTP server under concurrent streaming load, on gemma-3-270m.

    .venv/bin/python bench/http_server.py [--quick] [--sizes 1,4,8,16] [--tokens 128] [--repeats R]
        [--threads 2] [--routes openai,native] [--model PATH]

A benchmark, not a test: it asserts nothing about time. Every figure ends in one
`SUMMARY ...` line so that two commits can be compared with `grep SUMMARY`. About 2 minutes
by default on an idle 2-core machine (under a minute with `--quick`).

What runs:

- A real `power serve` subprocess (conftest's `run_power_server`) on a free loopback port, with
  POWER_NUM_PARALLEL = the largest concurrency and POWER_NUM_THREAD = `--threads`, and a
  temporary store holding gemma-3-270m (`import_gguf`, TEMPLATE `{{ .Prompt }}` so that
  /v1/completions sends the prompt as it is, num_ctx 1024 per sequence).
- For each concurrency C in `--sizes`: C clients (one `httpx.AsyncClient` under trio, HTTP/1.1,
  one connection per stream) each stream a greedy completion (temperature 0, repeat_penalty 1,
  `--tokens` tokens) of a distinct prompt (bench/common.py's openings), through
  `/v1/completions` (SSE) and, separately, `/api/generate` with `raw: true` (NDJSON).
- The reference at the same N: bench/engine.py's bare ctypes loop (`reference_run`: one batch
  per step, greedy numpy argmax) in this process, on its own context opened as power opens
  one (n_seq = the largest C, kv_unified, num_ctx 1024 per sequence), while the server is idle.

With `--baseline PATH` a second server runs the code of another checkout (a `git worktree` of
an older commit, say) on the same store, and each round runs its routes too, after this
checkout's: before/after ratios from one run, under the same load.

Runs alternate (reference, then the routes, each round starting with the next one)
`--repeats` times per C (default 3). Each round's
ratio compares a route with the reference run just before it (so a slow moment of a loaded
machine affects both sides alike); the SUMMARY ratio is the median over rounds, and the best
run of each side is printed beside it.

Figures, per side and C:
- window rate: generated tokens / (last token received - first request sent). For the
  reference the same window is its prompt decode + generation; tokens are the server's own
  count (`usage.completion_tokens`, `eval_count`). This is the `http/ref` SUMMARY ratio.
- steady rate: from the moment every stream has its first token to the last token, tokens
  received inside that window (counted one per streamed line, i.e. per chunk); the
  reference's generation phase alone. Printed beside, for comparison with bench/engine.py.
- per stream: time to first token (from sending the request to the first text line), mean
  over streams; inter-token latency (gap between text lines of one stream), p50 and p95 over
  all gaps of all streams.
- CPU: cores used by the server process, by this process (the HTTP clients, or the reference),
  and by everything else on the machine ("other"; above ~0.3 the run was disturbed); and the
  CPU time of the server's trio thread (HTTP, JSON, the engine's bookkeeping) per generated
  token, the cost of the HTTP path that does not depend on how busy the machine is.

The clients are lean: they split the body into lines themselves and parse JSON only where a
count or an error is (the final line), so that the client's own CPU, which competes with the
server's on a small machine, stays small.

The llama-server and reference figures quoted from /work/shared/NOTES.md were measured
elsewhere on this kind of machine, not in this run; they are labelled so.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import httpx
import trio
from docopt import docopt

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from common import N_BATCH, PROMPTS, open_context  # noqa: E402  (bench/common.py)
from engine import in_worker, print_machine, reference_run  # noqa: E402  (bench/engine.py)

from conftest import run_power_server  # noqa: E402  (the repository's conftest.py)
from power.engine.llama import Batch, LlamaContext, LlamaModel  # noqa: E402
from power.registry.models import import_gguf  # noqa: E402
from power.registry.store import Store  # noqa: E402

MODEL_NAME = "gemma3:270m"
NUM_CTX = 1024
#: Cores taken by other work above which a run is marked disturbed.
OTHER_WORK_LIMIT = 0.3

#: Measured elsewhere on this kind of machine (2 cores, gemma-3-270m Q4_K_M, 2 threads), quoted
#: from /work/shared/NOTES.md; NOT measured in this run.
NOTES_LLAMA_SERVER = {1: 71.0, 4: 105.0, 8: 169.0}  # llama-server -np 8, /v1/completions, 128 tok
NOTES_REFERENCE = {1: 79.0, 2: 86.0, 4: 141.0, 8: 192.0, 16: 258.0}  # bare ctypes loop

ROUTE_LABELS = {"openai": "/v1/completions", "native": "/api/generate raw"}
#: The sides of the server started from `--baseline` are its routes with this suffix.
BASELINE_SUFFIX = "@baseline"


# ---------------------------------------------------------------------- CPU accounting


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + (values[4] if len(values) > 4 else 0)


def _process_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds of process `pid` (of its thread `tid` when given)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids() -> set[int]:
    """The `power serve` children of this process (run_power_server yields only its URL)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"power\0serve" in cmdline:
            found.add(int(entry))
    return found


@attrs.frozen
class CpuUse:
    """Cores in use during a run, on average: the server, this process, everything else."""

    server: float
    own: float
    other: float
    trio_seconds: float = 0.0  # CPU seconds of the server's main (trio) thread in the run

    def describe(self) -> str:
        return f"cpu: server {self.server:.2f}, bench {self.own:.2f}, other {self.other:.2f} cores"


class CpuWatch:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.wall = time.perf_counter()
        self.machine = _machine_ticks()
        self.server = _process_seconds(pid) if pid else 0.0
        self.trio = _process_seconds(pid, pid) if pid else 0.0
        self.own = time.process_time()

    def stop(self) -> CpuUse:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        total, idle = _machine_ticks()
        busy_share = 1.0 - (idle - self.machine[1]) / max(total - self.machine[0], 1)
        server = ((_process_seconds(self.pid) if self.pid else 0.0) - self.server) / wall
        trio_seconds = (_process_seconds(self.pid, self.pid) - self.trio) if self.pid else 0.0
        own = (time.process_time() - self.own) / wall
        busy = busy_share * (os.cpu_count() or 1)
        return CpuUse(server, own, max(busy - server - own, 0.0), trio_seconds)


# ---------------------------------------------------------------------- measurements


@attrs.frozen
class Stream:
    """One client's streamed completion: when it was sent, when each text line arrived."""

    sent: float
    arrivals: list[float]
    tokens: int  # the server's count of generated tokens
    done_reason: str


@attrs.frozen
class Run:
    """One run of C concurrent generations (HTTP streams, or the reference loop)."""

    tokens: int
    window: float  # first request sent (or prompt decode started) -> last token
    steady_tokens: int
    steady: float  # every sequence has its first token -> last token
    ttft: float  # mean over streams (reference: the prompt decode)
    gaps: list[float]
    cpu: CpuUse
    missing: int = 0  # tokens fewer than C x the requested count (an early end of generation)

    @property
    def rate(self) -> float:
        return self.tokens / self.window if self.window > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        return self.steady_tokens / self.steady if self.steady > 0 else 0.0

    @property
    def disturbed(self) -> bool:
        return self.cpu.other > OTHER_WORK_LIMIT

    @property
    def trio_ms_per_token(self) -> float:
        return 1e3 * self.cpu.trio_seconds / self.tokens if self.tokens else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def http_run(streams: list[Stream], n_tokens: int, cpu: CpuUse) -> Run:
    first_sent = min(s.sent for s in streams)
    last = max(s.arrivals[-1] for s in streams if s.arrivals)
    t0 = max(s.arrivals[0] for s in streams if s.arrivals)
    steady_tokens = sum(max(s.tokens - sum(1 for a in s.arrivals if a <= t0), 0) for s in streams)
    gaps = [b - a for s in streams for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]
    return Run(
        tokens=sum(s.tokens for s in streams),
        window=last - first_sent,
        steady_tokens=steady_tokens,
        steady=last - t0,
        ttft=statistics.fmean(s.arrivals[0] - s.sent for s in streams if s.arrivals),
        gaps=gaps,
        cpu=cpu,
        missing=sum(max(n_tokens - s.tokens, 0) for s in streams),
    )


async def stream_openai(client: httpx.AsyncClient, prompt: str, n_tokens: int) -> Stream:
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": n_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "options": {"repeat_penalty": 1.0},
    }
    arrivals: list[float] = []
    tokens, reason = 0, "?"
    sent = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in _lines(response):
            now = time.perf_counter()
            if not line.startswith(b"data: {"):
                continue  # blank separators, data: [DONE]
            if b'"text":"' in line and b'"text":""' not in line:
                arrivals.append(now)  # a chunk with text: not parsed
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            for choice in event.get("choices") or ():
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    return Stream(sent, arrivals, tokens, reason)


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's lines as bytes (httpx's aiter_lines decodes text and costs more)."""
    rest = b""
    async for data in response.aiter_bytes():
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            yield line
    if rest:
        yield rest


async def stream_native(client: httpx.AsyncClient, prompt: str, n_tokens: int) -> Stream:
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "raw": True,
        "stream": True,
        "options": {"num_predict": n_tokens, "temperature": 0, "repeat_penalty": 1.0},
    }
    arrivals: list[float] = []
    tokens, reason = 0, "?"
    sent = time.perf_counter()
    async with client.stream("POST", "/api/generate", json=body) as response:
        response.raise_for_status()
        async for line in _lines(response):
            now = time.perf_counter()
            if not line:
                continue
            if line.endswith(b'"done":false}') and b'"response":""' not in line:
                arrivals.append(now)  # a chunk with text: not parsed
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("response"):
                arrivals.append(now)
            if chunk.get("done"):
                tokens, reason = int(chunk.get("eval_count") or 0), chunk.get("done_reason", "?")
    return Stream(sent, arrivals, tokens, reason)


STREAMERS: dict[str, Callable[[httpx.AsyncClient, str, int], Awaitable[Stream]]] = {
    "openai": stream_openai,
    "native": stream_native,
}


async def run_http(
    client: httpx.AsyncClient, route: str, prompts: list[str], n_tokens: int, pid: int | None
) -> Run:
    streams: list[Stream | None] = [None] * len(prompts)
    streamer = STREAMERS[route]

    async def one(i: int) -> None:
        streams[i] = await streamer(client, prompts[i], n_tokens)

    watch = CpuWatch(pid)
    async with trio.open_nursery() as nursery:
        for i in range(len(prompts)):
            nursery.start_soon(one, i)
    cpu = watch.stop()
    return http_run([s for s in streams if s is not None], n_tokens, cpu)


@attrs.define
class Reference:
    """bench/engine.py's bare loop on a context of this process's own."""

    model: LlamaModel
    n_seq: int
    threads: int
    context: LlamaContext = attrs.field(init=False)
    batch: Batch = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.context = open_context(self.model, NUM_CTX, self.n_seq, self.threads)
        self.batch = Batch(N_BATCH, 1)

    async def run(self, prompts: list[str], n_tokens: int) -> Run:
        tokens = [self.model.tokenize(p) for p in prompts]
        watch = CpuWatch(None)
        result = await in_worker(
            reference_run, self.model, self.context, self.batch, tokens, n_tokens
        )
        cpu = watch.stop()
        self.context.clear()
        n = len(prompts)
        window = result.prompt_seconds + result.seconds
        per_seq = (result.tokens + n) / n
        return Run(
            tokens=result.tokens + n,
            window=window,
            steady_tokens=result.tokens,
            steady=result.seconds,
            ttft=result.prompt_seconds,
            gaps=[result.seconds / max(per_seq - 1, 1)],
            cpu=cpu,
            missing=max(n * n_tokens - (result.tokens + n), 0),
        )

    def close(self) -> None:
        self.batch.close()
        self.context.close()


# ---------------------------------------------------------------------- the run


def prompts_for(take: str, n: int) -> list[str]:
    """n distinct openings; `take` makes each run's prompts new to the server's prompt cache."""
    texts = [
        PROMPTS[i % len(PROMPTS)] if i < len(PROMPTS) else f"Part {i}. {PROMPTS[i % len(PROMPTS)]}"
        for i in range(n)
    ]
    return [f"{take}. {text}" for text in texts]


def describe(label: str, run: Run, n_tokens: int, streams: int) -> str:
    line = (
        f"  {label:<28} {run.rate:6.1f} tok/s window ({run.tokens} tokens in {run.window:.2f} s), "
        f"steady {run.steady_rate:6.1f}; ttft {run.ttft * 1e3:6.0f} ms"
    )
    if label != "reference":
        line += (
            f"; itl p50 {percentile(run.gaps, 0.5) * 1e3:5.1f} ms, "
            f"p95 {percentile(run.gaps, 0.95) * 1e3:5.1f} ms; "
            f"trio thread {run.trio_ms_per_token:.3f} ms/token"
        )
    else:
        line += f"; step {run.gaps[0] * 1e3:5.1f} ms"
    line += f"; {run.cpu.describe()}"
    if run.disturbed:
        line += " DISTURBED"
    if run.missing:
        line += f"; {run.missing} of {streams * n_tokens} tokens missing (early end)"
    return line


#: concurrency -> side ("reference", or a route) -> its runs, one per round, in order
Results = dict[int, dict[str, list[Run]]]


def sides(args: Args) -> list[str]:
    """The HTTP sides of a round: each route on this checkout's server, then on the baseline's."""
    routes = list(args.routes)
    if args.baseline is not None:
        routes += [f"{route}{BASELINE_SUFFIX}" for route in args.routes]
    return routes


def side_label(side: str) -> str:
    route, _, baseline = side.partition("@")
    return ROUTE_LABELS[route] + (" (baseline)" if baseline else "")


async def start_server(
    stack: contextlib.ExitStack, store_root: Path, env: dict[str, str], code: Path | None
) -> tuple[str, int | None]:
    """A `power serve` of this checkout (or of the checkout at `code`), model loaded."""
    if code is not None:  # its own `power` package, not the one `python -m` finds in the cwd
        env = {**env, "PYTHONPATH": str(code), "PYTHONSAFEPATH": "1"}
    others = server_pids()
    base_url = stack.enter_context(run_power_server(store_root, env))
    pid = next(iter(server_pids() - others), None)
    async with httpx.AsyncClient(base_url=base_url, timeout=300.0) as client:
        t_load = time.perf_counter()
        await stream_native(client, "Warm-up.", 2)  # loads the model
    print(
        f"server at {base_url} (pid {pid}, code {code or ROOT}); model loaded in "
        f"{time.perf_counter() - t_load:.1f} s",
        flush=True,
    )
    return base_url, pid


async def bench(args: Args, store_root: Path) -> Results:
    sizes, n_tokens = args.sizes, args.tokens
    env = {
        "POWER_NUM_PARALLEL": str(max(sizes)),
        "POWER_NUM_THREAD": str(args.threads),
        "POWER_SPECULATIVE": "1" if args.speculative else "0",
    }
    results: Results = {}
    limits = httpx.Limits(max_connections=max(sizes) + 4, max_keepalive_connections=max(sizes))
    timeout = httpx.Timeout(300.0)
    with contextlib.ExitStack() as stack:
        servers = {"": await start_server(stack, store_root, env, None)}
        if args.baseline is not None:
            servers[BASELINE_SUFFIX] = await start_server(stack, store_root, env, args.baseline)
        clients = {
            key: httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)
            for key, (url, _) in servers.items()
        }
        model = LlamaModel(args.model)
        reference = Reference(model, max(sizes), args.threads)
        try:
            warm = prompts_for("Warm-up", max(sizes))
            await reference.run(warm, 4)
            for side in sides(args):
                route, _, key = side.partition("@")
                key = f"@{key}" if key else ""
                await run_http(clients[key], route, warm, 4, servers[key][1])
            for n in sizes:
                print(f"== C={n} ==", flush=True)
                runs: dict[str, list[Run]] = {"reference": []}
                for r in range(args.repeats):
                    take = f"Take {r + 1}"
                    runs["reference"].append(await reference.run(prompts_for(take, n), n_tokens))
                    print(describe("reference", runs["reference"][-1], n_tokens, n))
                    # the sides take turns at running first: in a run on a busy machine the
                    # side just after the reference came out slower in every round, whichever
                    # code it ran
                    order = sides(args)
                    for side in order[r % len(order) :] + order[: r % len(order)]:
                        route, _, key = side.partition("@")
                        key = f"@{key}" if key else ""
                        prompts = prompts_for(f"{take} {side}", n)
                        run = await run_http(
                            clients[key], route, prompts, n_tokens, servers[key][1]
                        )
                        runs.setdefault(side, []).append(run)
                        print(describe(side_label(side), run, n_tokens, n), flush=True)
                results[n] = runs
        finally:
            reference.close()
            model.close()
            for client in clients.values():
                await client.aclose()
    return results


def round_ratios(runs: dict[str, list[Run]], route: str) -> list[float]:
    """Each round's route rate over the rate of the reference run just before it."""
    return [
        run.rate / ref.rate
        for run, ref in zip(runs[route], runs["reference"], strict=True)
        if ref.rate > 0
    ]


def print_summaries(results: Results, args: Args) -> None:
    print(
        f"== {args.repeats} rounds per concurrency; window = first request sent to last token; "
        "ratio = median over rounds of (route / the reference run of the same round) =="
    )
    sizes = sorted(results)
    medians: dict[tuple[int, str], float] = {}
    for n in sizes:
        runs = results[n]
        ref_best = max(runs["reference"], key=lambda r: r.rate)
        for route in sides(args):
            ratios = round_ratios(runs, route)
            ratio = medians[n, route] = statistics.median(ratios)
            best = max(runs[route], key=lambda r: r.rate)
            trio_ms = statistics.median(r.trio_ms_per_token for r in runs[route])
            name = "http/ref" if route.startswith("openai") else "http-native/ref"
            name += "-baseline" if route.endswith(BASELINE_SUFFIX) else ""
            disturbed = sum(r.disturbed for r in runs[route] + runs["reference"])
            print(
                f"SUMMARY {name} C={n}: {ratio:.3f} (median of {len(ratios)} rounds: "
                f"{', '.join(f'{x:.3f}' for x in ratios)}; best runs: power {best.rate:.0f} "
                f"tok/s over HTTP {side_label(route)}, reference {ref_best.rate:.0f} tok/s; "
                f"steady {best.steady_rate:.0f} vs {ref_best.steady_rate:.0f}; ttft "
                f"{best.ttft * 1e3:.0f} ms, itl p50 {percentile(best.gaps, 0.5) * 1e3:.1f} ms "
                f"p95 {percentile(best.gaps, 0.95) * 1e3:.1f} ms; server trio thread "
                f"{trio_ms:.3f} ms CPU per token"
                + (f"; {disturbed} runs disturbed" if disturbed else "")
                + ")"
            )
    base = sizes[0]
    for n in sizes[1:]:
        for route in args.routes:
            name = "http" if route == "openai" else "http-native"
            run = max(results[n][route], key=lambda r: r.rate)
            first = max(results[base][route], key=lambda r: r.rate)
            ref_scale = max(r.rate for r in results[n]["reference"]) / max(
                r.rate for r in results[base]["reference"]
            )
            print(
                f"SUMMARY {name} C={n} vs C={base}: {run.rate / first.rate:.2f}x "
                f"({run.rate:.0f} vs {first.rate:.0f} tok/s, best runs; the reference scales "
                f"{ref_scale:.2f}x)"
            )
    for n in sizes:
        if n not in NOTES_LLAMA_SERVER or "openai" not in args.routes:
            continue
        run = max(results[n]["openai"], key=lambda r: r.rate)
        quoted = NOTES_LLAMA_SERVER[n]
        print(
            f"SUMMARY http/llama-server C={n}: {run.rate / quoted:.2f} (power {run.rate:.0f} "
            f"tok/s in this run, {args.tokens} tokens per stream; llama-server -np 8 "
            f"{quoted:.0f} tok/s (128 tokens) and bare loop "
            f"{NOTES_REFERENCE.get(n, float('nan')):.0f} tok/s were measured elsewhere on this "
            "kind of machine (shared/NOTES.md), not in this run)"
        )
    print("== power over HTTP / the bare loop, same run (median of rounds) ==")
    print(f"  {'clients':>7}  " + "  ".join(f"{side_label(r):>28}" for r in sides(args)))
    for n in sizes:
        cells = "  ".join(f"{medians[n, r]:>28.3f}" for r in sides(args))
        print(f"  {n:>7}  {cells}")


USAGE = """Usage:
  http_server.py [options]

Options:
  --model PATH     GGUF file [default: .models/gemma-3-270m-q4_k_m.gguf]
  --threads N      llama.cpp threads, server and reference [default: 2]
  --tokens N       generated tokens per stream (default 128, 64 with --quick)
  --sizes LIST     concurrencies (default 1,4,8,16; 1,8 with --quick)
  --repeats N      rounds per concurrency (default 3, 2 with --quick)
  --routes LIST    openai (/v1/completions), native (/api/generate) [default: openai,native]
  --baseline PATH  also run a server from another checkout (e.g. a `git worktree` of an
                   older commit), each round beside this one's, to compare in the same run
  --speculative    leave speculative decoding on in the server (its default); without it the
                   server runs with POWER_SPECULATIVE=0, so that it decodes exactly what the
                   bare loop decodes and the ratio is the cost of the HTTP path alone
  --quick          fewer sizes, tokens and runs
  -h --help        show this
"""


@attrs.frozen
class Args:
    model: Path
    threads: int
    tokens: int
    sizes: list[int]
    repeats: int
    routes: list[str]
    quick: bool
    baseline: Path | None = None
    speculative: bool = False


def parse_args(argv: list[str] | None) -> Args:
    values = docopt(USAGE, argv=argv)
    quick = bool(values["--quick"])
    model = Path(values["--model"])
    sizes = values["--sizes"] or ("1,8" if quick else "1,4,8,16")
    routes = [r for r in values["--routes"].split(",") if r.strip()]
    unknown = set(routes) - set(STREAMERS)
    if unknown:
        sys.exit(f"unknown routes: {', '.join(sorted(unknown))}")
    return Args(
        model=model if model.is_absolute() else ROOT / model,
        threads=int(values["--threads"]),
        tokens=int(values["--tokens"] or (64 if quick else 128)),
        sizes=sorted({int(x) for x in sizes.split(",") if x.strip()}),
        repeats=int(values["--repeats"] or (2 if quick else 3)),
        routes=routes,
        quick=quick,
        baseline=Path(values["--baseline"]).resolve() if values["--baseline"] else None,
        speculative=bool(values["--speculative"]),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.model.exists():
        sys.exit(f"{args.model} is missing: run `.venv/bin/python scripts/models.py gemma`")
    print_machine(args.model, args.threads)
    print(
        f"power serve: POWER_NUM_PARALLEL={max(args.sizes)}, POWER_NUM_THREAD={args.threads}, "
        f"POWER_SPECULATIVE={int(args.speculative)}, "
        f"num_ctx {NUM_CTX} per sequence; {args.tokens} tokens per stream, greedy; "
        f"routes {', '.join(ROUTE_LABELS[r] for r in args.routes)}",
        flush=True,
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="power-bench-http-") as tmp:
        store_root = Path(tmp) / "models"
        import_gguf(
            Store(store_root),
            MODEL_NAME,
            args.model,
            template="{{ .Prompt }}",
            parameters={"num_ctx": NUM_CTX},
        )
        results = trio.run(bench, args, store_root)
    print_summaries(results, args)
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
