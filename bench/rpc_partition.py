"""How long a split model takes to notice a worker whose machine vanished (needs root).

A worker that dies closes its sockets and is noticed at once. One whose machine loses power or
network sends nothing at all; ggml-rpc has no timeout and would wait for ever, so power's host
process turns on TCP keepalive and a 30 s TCP_USER_TIMEOUT on its worker connections
(power.engine.split_host). This script shows it: in a private network namespace
(`unshare -n`), two `power rpc-worker` processes on loopback serve gemma-3-270m; mid-stream,
worker 2 is stopped (SIGSTOP: it can no longer answer) and every packet it sends is dropped
(tc htb + u32 on its source port, so the host's own probes leave without a local error, as on a
real network). The stream must end with an error about 30 s later; the model then reloads on
worker 1 alone and answers again.

    sudo .venv/bin/python bench/rpc_partition.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import models as test_models  # noqa: E402  (scripts/models.py)

from power.engine import rpc  # noqa: E402
from power.engine.loadspec import LoadSpec  # noqa: E402
from power.engine.model import LoadedModel  # noqa: E402
from power.options import Options  # noqa: E402

PORTS = (50081, 50082)
BLACKHOLE = [
    "tc qdisc add dev lo root handle 1: htb default 10",
    "tc class add dev lo parent 1: classid 1:10 htb rate 10gbit",
    "tc class add dev lo parent 1: classid 1:20 htb rate 8bit ceil 8bit",
    "tc qdisc add dev lo parent 1:20 handle 20: pfifo limit 0",
    f"tc filter add dev lo protocol ip parent 1:0 prio 1 u32 match ip sport {PORTS[1]} 0xffff "
    "flowid 1:20",
]


def stamp(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


async def experiment(worker_pids: list[int]) -> None:
    endpoints = tuple(f"127.0.0.1:{p}" for p in PORTS)
    spec = attrs.evolve(
        LoadSpec.from_options(test_models.gemma(), Options(num_ctx=512), num_parallel=1),
        rpc_servers=endpoints,
    )
    greedy = Options(temperature=0, num_predict=8)
    model = await LoadedModel.open(spec)
    stamp(f"loaded: {', '.join(f'{s.device} {s.layers}' for s in model.context.placement)}")
    t_cut = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(model.run)
        stamp(f"answer: {await model.complete('1, 2, 3,', greedy)!r}")

        async def cut() -> None:
            nonlocal t_cut
            await trio.sleep(2)
            os.kill(worker_pids[1], signal.SIGSTOP)
            for command in BLACKHOLE:
                subprocess.run(command.split(), check=True, capture_output=True)
            t_cut = time.monotonic()
            stamp(f"worker {endpoints[1]} stopped and its packets dropped")

        nursery.start_soon(cut)
        n_chunks = 0
        try:
            with trio.fail_after(200):
                async for _ in model.generate("1, 2, 3,", Options(temperature=0, num_predict=-1)):
                    n_chunks += 1
        except Exception as exc:  # noqa: BLE001 - the error is what this script shows
            stamp(f"stream ended after {n_chunks} chunks, {time.monotonic() - t_cut:.1f}s after")
            stamp(f"error: {exc}")
        nursery.cancel_scope.cancel()
    model.close()
    t0 = time.monotonic()
    status = rpc.probe(endpoints[1])
    stamp(f"probe {endpoints[1]}: {status.value} ({time.monotonic() - t0:.1f}s)")
    model = await LoadedModel.open(spec)
    stamp(f"reloaded: {', '.join(f'{s.device} {s.layers}' for s in model.context.placement)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(model.run)
        stamp(f"answer: {await model.complete('1, 2, 3,', greedy)!r}")
        nursery.cancel_scope.cancel()
    model.close()


def main() -> None:
    if os.environ.get("_POWER_IN_NETNS") != "1":
        os.execvp(
            "unshare",
            ["unshare", "-n", "env", "_POWER_IN_NETNS=1", sys.executable, *sys.argv],
        )
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "power", "rpc-worker", "--port", str(p), "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        for p in PORTS
    ]
    try:
        for port in PORTS:
            while rpc.probe(f"127.0.0.1:{port}", timeout=1) is not rpc.WorkerStatus.READY:
                time.sleep(0.1)
        trio.run(experiment, [w.pid for w in workers])
    finally:
        for worker in workers:
            os.kill(worker.pid, signal.SIGCONT)
            worker.terminate()
            worker.wait(timeout=10)


if __name__ == "__main__":
    main()
