"""Fault injection against a real `power serve`: what leaks, what dies, what stalls.

    .venv/bin/python bench/faults.py [--url URL --pid PID] [--model NAME] [--streams N]
        [--idle N] [--seed S] [--quick] [--phases LIST]

Without `--url`, a `power serve` is started on a free loopback port with a temporary store
holding gemma-3-270m as `gemma3:270m` (from `.models/`, as the tests prepare it). With `--url`
and `--pid`, an already running server is used (its process is measured through /proc).

A script, not a test: it asserts nothing; it prints what it saw, one `SUMMARY` line per figure.
All the while, a prober sends `GET /api/version` every 20 ms and records the worst latency of
each phase. Phases:

1. dropped streams: `--streams` generations dropped at random points: before the first byte,
   after a few chunks, and during a cold model load (the model is unloaded first);
2. hostile options: NaN/±Infinity, out-of-range and absurd load options (the list below), each
   sent while a normal stream runs on the same model: their statuses, any 5xx, and whether the
   normal stream finished;
3. races: unloads (`keep_alive: 0`) and deletes of a copy racing generations on it;
4. a long prompt (~8,000 tokens) with `repeat_last_n: -1`, and `/api/version`'s worst wait;
5. `--idle` idle connections that send half a request and wait, and `/api/version` meanwhile;
6. a refused 1 GiB `/api/blobs` upload (bad digest): the server's RSS growth.

`--phases` runs only some of them, by name: dropped, hostile, races, long, idle, upload
(comma-separated; all by default), e.g. `--phases long,idle,upload` on a build where a hostile
option still kills the server and would leave the later phases unmeasured.

At the end: active sequences (from `/metrics`), RSS growth, threads and open files of the
server against the start, and whether the server is still alive.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import resource
import select
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from docopt import docopt

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

MODEL = "gemma3:270m"
PROMPT = "Once upon a time, in a small village at the foot of the mountains, there lived"

#: Options no request may use to crash, wedge or bloat the server: each must answer 200 or 400.
HOSTILE_OPTIONS: list[str] = [
    '{"num_batch": 1}',
    '{"num_batch": 2}',
    '{"num_batch": 3}',
    '{"num_batch": 0}',
    '{"num_batch": -1}',
    '{"temperature": NaN}',
    '{"temperature": Infinity}',
    '{"temperature": -Infinity}',
    '{"top_p": NaN}',
    '{"top_p": 7}',
    '{"typical_p": NaN}',
    '{"typical_p": Infinity}',
    '{"repeat_penalty": NaN}',
    '{"repeat_penalty": 1e-45}',
    '{"repeat_penalty": -Infinity}',
    '{"mirostat_tau": NaN}',
    '{"mirostat": 2, "mirostat_tau": Infinity}',
    '{"presence_penalty": -Infinity}',
    '{"frequency_penalty": -1e308}',
    '{"top_k": -3}',
    '{"mirostat": 9}',
    '{"num_predict": -5}',
    '{"num_ctx": 0}',
    '{"num_ctx": 1}',
    '{"num_ctx": -1073691824}',
    '{"num_ctx": 1e9}',
    '{"num_thread": 0}',
    '{"num_thread": 4096}',
    '{"num_thread": -1}',
    '{"num_gpu": -7}',
    '{"main_gpu": 99}',
    '{"seed": 1e300}',
    '{"repeat_last_n": -9}',
    '{"num_keep": -100}',
    '{"min_p": -1}',
    '{"tfs_z": NaN}',
    '{"stop": ["", ""]}',
]

OPTIONS_EXAMPLE = {
    # Ollama's docs/api.md "all options" example, as users paste it
    "num_keep": 5,
    "seed": 42,
    "num_predict": 10,
    "top_k": 20,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 0.7,
    "repeat_last_n": 33,
    "temperature": 0.8,
    "repeat_penalty": 1.2,
    "presence_penalty": 1.5,
    "frequency_penalty": 1.0,
    "penalize_newline": True,
    "stop": ["\n", "user:"],
    "numa": False,
    "num_ctx": 1024,
    "num_batch": 2,
    "num_gpu": 1,
    "main_gpu": 0,
    "use_mmap": True,
    "num_thread": 8,
}


# ---------------------------------------------------------------------- the server process


def proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open files of a process, from /proc."""
    out = {"rss": 0, "threads": 0, "files": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        out["files"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
    except OSError:
        return False
    return False


@contextlib.contextmanager
def own_server(env: dict[str, str]):
    """A `power serve` with a temporary store holding gemma; yields (url, pid)."""
    from http_server import server_pids  # bench/http_server.py: finds the serve children

    from conftest import GEMMA_CHAT_TEMPLATE, run_power_server
    from power.registry.models import import_gguf
    from power.registry.store import Store

    sys.path.insert(0, str(ROOT / "scripts"))
    import models as test_models  # scripts/models.py

    with tempfile.TemporaryDirectory(prefix="power-faults-") as tmp:
        store_root = Path(tmp) / "models"
        import_gguf(
            Store(store_root),
            MODEL,
            test_models.gemma(),
            template=GEMMA_CHAT_TEMPLATE,
            parameters={"stop": ["<end_of_turn>"], "num_ctx": 1024},
        )
        with run_power_server(store_root, env) as url:
            pid = next(iter(server_pids()), None)
            assert pid is not None, "could not find the power serve process"
            yield url, pid


# ---------------------------------------------------------------------- measurement helpers


class Prober:
    """GET /api/version every `interval` s; the worst latency per phase."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.url = url
        self.interval = interval
        self.phase = "start"
        self.worst: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            task_status.started()
            while True:
                t0 = time.perf_counter()
                phase = self.phase
                try:
                    r = await client.get("/api/version")
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                self.worst[phase] = max(self.worst.get(phase, 0.0), dt)
                if not ok:
                    self.failures[phase] = self.failures.get(phase, 0) + 1
                await trio.sleep(self.interval)


async def active_sequences(client: httpx.AsyncClient) -> int:
    r = await client.get("/metrics")
    for line in r.text.splitlines():
        if line.startswith("power_active_sequences "):
            return int(float(line.split()[1]))
    return -1


async def settle(client: httpx.AsyncClient, limit: float = 10.0) -> int:
    """Active sequences once the server has had `limit` s to free what dropped clients held."""
    deadline = time.monotonic() + limit
    n = await active_sequences(client)
    while n > 0 and time.monotonic() < deadline:
        await trio.sleep(0.1)
        n = await active_sequences(client)
    return n


def body(options: dict | str | None = None, **extra) -> bytes:
    """A generate request; `options` may be raw JSON text (for NaN/Infinity)."""
    fields = {"model": MODEL, "prompt": PROMPT, "stream": True, **extra}
    text = json.dumps(fields)
    if options is not None:
        raw = options if isinstance(options, str) else json.dumps(options)
        text = text[:-1] + f', "options": {raw}}}'
    return text.encode()


async def stream_dropped(client: httpx.AsyncClient, rng: random.Random, where: str) -> str:
    """One generation dropped at a point of `where`'s kind; returns what happened."""
    content = body({"num_predict": 64, "temperature": 0.7, "seed": rng.randrange(1 << 30)})
    if where == "before-first-byte":
        with trio.move_on_after(rng.uniform(0.0, 0.02)):
            async with client.stream("POST", "/api/generate", content=content) as r:
                await r.aread()
        return "dropped"
    n_chunks = rng.randint(1, 24)
    async with client.stream("POST", "/api/generate", content=content) as r:
        if r.status_code != 200:
            return f"status {r.status_code}"
        seen = 0
        async for _ in r.aiter_lines():
            seen += 1
            if seen >= n_chunks:
                return "dropped"
    return "finished"


async def phase_dropped(
    url: str, n_streams: int, rng: random.Random, pid: int
) -> tuple[dict[str, int], dict[str, int]]:
    """Streams dropped at random points, then clients dropped during three cold loads;
    (outcomes, the server's /proc status right after the streams, before the reloads)."""
    outcomes: dict[str, int] = {}
    limiter = trio.CapacityLimiter(8)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(where: str) -> None:
            async with limiter:
                try:
                    what = await stream_dropped(client, rng, where)
                except httpx.HTTPError as exc:
                    what = type(exc).__name__
                outcomes[what] = outcomes.get(what, 0) + 1

        async with trio.open_nursery() as nursery:
            for i in range(n_streams):
                nursery.start_soon(one, "before-first-byte" if i % 3 == 0 else "mid-stream")
        await settle(client)
        after_streams = proc_status(pid)
        # during a cold load: unload, then drop clients 50, 200 and 500 ms into the load
        for delay in (0.05, 0.2, 0.5):
            await client.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
            with trio.move_on_after(delay):
                await client.post("/api/generate", content=body({"num_predict": 8}))
            try:
                r = await client.post(
                    "/api/generate",
                    json={
                        "model": MODEL,
                        "prompt": "Hi",
                        "stream": False,
                        "options": {"num_predict": 4},
                    },
                    timeout=60,
                )
                what = str(r.status_code)
            except httpx.HTTPError as exc:
                what = f"{type(exc).__name__} (the model is wedged)"
            key = f"after drop {int(delay * 1000)} ms into a load: {what}"
            outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes, after_streams


async def phase_hostile(url: str, pid: int) -> tuple[dict[str, int], list[str], int]:
    """Each hostile body beside a normal stream; (statuses, 5xx details, normal streams cut)."""
    statuses: dict[str, int] = {}
    bad: list[str] = []
    cut = 0
    n_timeouts = 0  # in a row: the model is wedged, and every other body would wait as long
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        # a bound on the length where the body sets none: without it a legitimate body (num_batch
        # 1, say) generates until the context is full, minutes on 2 cores, and two of those in a
        # row read as a wedged model (the timeouts below)
        bodies = [
            body(o if "num_predict" in o else '{"num_predict": 48, ' + o[1:], stream=False)
            for o in HOSTILE_OPTIONS
        ]
        bodies.append(body(OPTIONS_EXAMPLE, stream=False))
        labels = [*HOSTILE_OPTIONS, "docs/api.md all-options example"]
        for label, content in zip(labels, bodies, strict=True):
            if not alive(pid):
                bad.append(f"{label}: not sent, the server is dead")
                continue
            if n_timeouts >= 2:
                bad.append(f"{label}: not sent, the model is wedged (two timeouts in a row)")
                continue
            normal_done = trio.Event()
            normal_ok = [False]

            async def normal(done=normal_done, ok=normal_ok) -> None:
                try:
                    r = await client.post(
                        "/api/generate",
                        content=body({"num_predict": 24, "temperature": 0}, stream=False),
                    )
                    ok[0] = r.status_code == 200 and r.json().get("done") is True
                except httpx.HTTPError:
                    ok[0] = False
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(normal)
                try:
                    r = await client.post("/api/generate", content=content)
                    status = r.status_code
                    detail = r.text[:160]
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)
            n_timeouts = n_timeouts + 1 if detail.startswith("ReadTimeout") else 0
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status >= 500 or status == 0:
                bad.append(f"{label} -> {status} {detail}")
            if not normal_ok[0]:
                cut += 1
    return statuses, bad, cut


async def phase_races(url: str, rounds: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for i in range(rounds):
            copy = f"faults-copy-{i}:latest"
            await client.post("/api/copy", json={"source": MODEL, "destination": copy})

            async def generate(name=copy) -> None:
                try:
                    r = await client.post(
                        "/api/generate",
                        json={
                            "model": name,
                            "prompt": PROMPT,
                            "stream": False,
                            "options": {"num_predict": 16},
                        },
                    )
                    count(f"generate {r.status_code}")
                except httpx.HTTPError as exc:
                    count(f"generate {type(exc).__name__}")

            async def unload(name=copy) -> None:
                r = await client.post("/api/generate", json={"model": name, "keep_alive": 0})
                count(f"unload {r.status_code}")

            async def delete(name=copy) -> None:
                r = await client.request("DELETE", "/api/delete", json={"model": name})
                count(f"delete {r.status_code}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(generate)
                nursery.start_soon(generate)
                nursery.start_soon(unload)
                nursery.start_soon(delete)
        r = await client.get("/api/tags")
        leftovers = [m["name"] for m in r.json()["models"] if m["name"].startswith("faults-")]
        outcomes[f"copies left listed: {len(leftovers)}"] = 1
    return outcomes


async def phase_long_prompt(url: str) -> int:
    words = " ".join(f"word{i % 997}" for i in range(6000))
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        r = await client.post(
            "/api/generate",
            json={
                "model": MODEL,
                "prompt": words,
                "stream": False,
                "options": {"num_ctx": 8192, "repeat_last_n": -1, "num_predict": 4},
            },
        )
        return r.status_code


def closed_by_peer(sockets: list) -> int:
    """How many of `sockets` the other side has closed (poll: hang-up or error)."""
    poller = select.poll()
    for sock in sockets:
        poller.register(sock.fileno(), select.POLLRDHUP)
    gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR
    return sum(1 for _, events in poller.poll(0) if events & gone)


async def phase_idle(url: str, pid: int, n: int, prober: Prober) -> dict[str, float]:
    """Open `n` connections that send half a request, then time `GET /api/version` on new
    connections; the figures: opened, worst version s, closed by the server, server's files."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 1024)), hard))
    sockets: list[trio.socket.SocketType] = []
    try:
        for _ in range(n):
            sock = trio.socket.socket()
            try:
                await sock.connect((host, int(port)))
                await sock.send(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
            except OSError:
                sock.close()
                break
            sockets.append(sock)
        opened = len(sockets)
        prober.phase = "idle connections held"
        # each probe on a new connection (the pooled one would hide a starved accept queue)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            worst = 0.0
            for _ in range(20):
                t1 = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/api/version", headers={"Connection": "close"})
                worst = max(worst, time.perf_counter() - t1)
                await trio.sleep(0.05)
        return {
            "opened": opened,
            "worst": worst,
            "closed": closed_by_peer(sockets),
            "server_files": proc_status(pid)["files"],
        }
    finally:
        for sock in sockets:
            sock.close()


#: The refused upload, run in a process of its own so that its sending does not delay this
#: process's prober: httpx streams `size` bytes to a malformed digest and prints the status
#: (0 when the server closed the connection before answering).
UPLOADER = """
import sys, httpx
url, size = sys.argv[1], int(sys.argv[2])
block = bytes(1 << 20)
def chunks():
    for _ in range(size // len(block)):
        yield block
try:
    print(httpx.post(url + "/api/blobs/sha256:not-a-digest", content=chunks(), timeout=600).status_code)
except httpx.HTTPError:
    print(0)
"""


async def phase_refused_upload(url: str, pid: int, size: int) -> tuple[int, int]:
    """A 1 GiB upload to a refused digest; (status, RSS growth in bytes at its peak, sampled
    every 10 ms)."""
    before = peak = proc_status(pid)["rss"]
    done = trio.Event()
    result: list[bytes] = []

    async def upload() -> None:
        finished = await trio.run_process(
            [sys.executable, "-c", UPLOADER, url, str(size)], capture_stdout=True
        )
        result.append(finished.stdout)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        while not done.is_set():
            peak = max(peak, proc_status(pid)["rss"])
            with trio.move_on_after(0.01):
                await done.wait()
    peak = max(peak, proc_status(pid)["rss"])
    return int(result[0].strip() or 0), peak - before


# ---------------------------------------------------------------------- main


def summary(name: str, value: float, detail: str) -> None:
    print(f"SUMMARY {name}: {value:g} ({detail})", flush=True)


async def run(url: str, pid: int, args: dict) -> None:
    rng = random.Random(int(args["--seed"]))
    quick = args["--quick"]
    n_streams = int(args["--streams"]) if not quick else min(60, int(args["--streams"]))
    n_idle = int(args["--idle"]) if not quick else min(500, int(args["--idle"]))
    prober = Prober(url)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        # warm up with as many sequences as the phases run at once (the first batches of
        # several sequences allocate llama.cpp's larger compute buffers: not a leak)
        async with trio.open_nursery() as warm:
            for i in range(8):
                warm.start_soon(
                    functools.partial(
                        client.post,
                        "/api/generate",
                        json={
                            "model": MODEL,
                            "prompt": f"{PROMPT} {i}",
                            "stream": False,
                            "options": {"num_predict": 16},
                        },
                    )
                )
        start = proc_status(pid)
        print(f"server pid {pid}: {start}", flush=True)

        async def dropped() -> None:
            outcomes, after_streams = await phase_dropped(url, n_streams, rng, pid)
            active = await settle(client)
            after = proc_status(pid)
            print(f"dropped streams: {outcomes}", flush=True)
            summary("dropped_streams_active_after", active, f"{n_streams} streams dropped")
            summary(
                "dropped_streams_rss_growth_pct",
                round(100 * (after_streams["rss"] - start["rss"]) / max(1, start["rss"]), 1),
                f"{start['rss'] >> 20} -> {after_streams['rss'] >> 20} MiB after the streams",
            )
            summary(
                "dropped_in_loads_rss_growth_pct",
                round(100 * (after["rss"] - after_streams["rss"]) / max(1, start["rss"]), 1),
                f"{after_streams['rss'] >> 20} -> {after['rss'] >> 20} MiB over three reloads",
            )

        async def hostile() -> None:
            statuses, bad, cut = await phase_hostile(url, pid)
            print(f"hostile options: statuses {statuses}", flush=True)
            for line in bad:
                print(f"  5xx/failed: {line}", flush=True)
            summary("hostile_options_5xx", len(bad), f"{len(HOSTILE_OPTIONS) + 1} bodies")
            summary("hostile_options_normal_streams_cut", cut, "a normal stream beside each")

        async def races() -> None:
            print(f"races: {await phase_races(url, 4 if quick else 12)}", flush=True)

        async def long_prompt() -> None:
            status = await phase_long_prompt(url)
            summary(
                "long_prompt_version_worst_ms",
                round(1000 * prober.worst.get(prober.phase, math.nan), 1),
                f"prompt answered {status}",
            )

        async def idle() -> None:
            seen = await phase_idle(url, pid, n_idle, prober)
            summary(
                "idle_connections_version_worst_ms",
                round(1000 * seen["worst"], 1),
                f"{seen['opened']} of {n_idle} half-open connections opened, "
                f"{seen['closed']} of them closed by the server, "
                f"{seen['server_files']} files open in the server",
            )

        async def upload() -> None:
            status, growth = await phase_refused_upload(url, pid, (64 if quick else 1024) << 20)
            summary("refused_upload_rss_growth_mib", round(growth / 2**20, 1), f"status {status}")

        phases = [
            ("dropped", "dropped streams", dropped),
            ("hostile", "hostile options", hostile),
            ("races", "unload/delete races", races),
            ("long", "8k-token prompt, repeat_last_n -1", long_prompt),
            ("idle", "idle connections", idle),
            ("upload", "refused 1 GiB upload", upload),
        ]
        chosen = set((args["--phases"] or ",".join(key for key, _, _ in phases)).split(","))
        unknown = chosen - {key for key, _, _ in phases}
        if unknown:
            raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
        async with trio.open_nursery() as nursery:
            await nursery.start(prober.run)
            for key, name, phase in phases:
                if key not in chosen:
                    continue
                prober.phase = name
                try:
                    await phase()
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"phase {name!r} failed: {exc!r}", flush=True)
                if not alive(pid):
                    print(f"THE SERVER DIED during {name!r}", flush=True)
                    break
            prober.phase = "end"
            active = await settle(client) if alive(pid) else -1
            end = proc_status(pid)
            nursery.cancel_scope.cancel()
    summary("active_sequences_at_end", active, "after every phase")
    summary(
        "rss_growth_pct",
        round(100 * (end["rss"] - start["rss"]) / max(1, start["rss"]), 1),
        f"{start['rss'] >> 20} -> {end['rss'] >> 20} MiB",
    )
    summary("threads_growth", end["threads"] - start["threads"], f"{start['threads']} at start")
    summary("open_files_growth", end["files"] - start["files"], f"{start['files']} at start")
    summary("server_alive", int(alive(pid)), "1 = alive")
    for phase, worst in prober.worst.items():
        failures = prober.failures.get(phase, 0)
        print(f"  /api/version worst {1000 * worst:.1f} ms during {phase} ({failures} failed)")
    summary(
        "version_worst_ms",
        round(1000 * max(prober.worst.values(), default=math.nan), 1),
        "GET /api/version every 20 ms, whole run",
    )


def main() -> None:
    args = docopt(
        "Usage:\n  faults.py [--url URL --pid PID] [--model NAME] [--streams N] [--idle N] "
        "[--seed S] [--quick] [--phases LIST]\n\nOptions:\n"
        "  --url URL  a running server (with --pid) instead of one of our own\n"
        "  --pid PID  that server's process id (measured through /proc)\n"
        "  --streams N  [default: 1000]\n"
        "  --idle N  [default: 10000]\n"
        "  --seed S  [default: 1]\n"
        "  --phases LIST  comma-separated phase names (all when not given)\n"
        "  --model NAME  [default: gemma3:270m]\n"
    )
    global MODEL
    MODEL = args["--model"]
    if args["--url"]:
        trio.run(run, args["--url"], int(args["--pid"]), args)
        return
    env = {"POWER_NUM_PARALLEL": "4", "POWER_NUM_THREAD": "2"}
    with own_server(env) as (url, pid):
        trio.run(run, url, pid, args)


if __name__ == "__main__":
    main()
