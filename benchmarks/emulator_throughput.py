"""Throughput of one emulated QPU through its REST API, with sub-second tasks.

The emulator runs as its own process (``python -m qflow.emulator``, superconducting backend,
``--time-scale 0`` so the latency is ~0 and a task costs its real simulated-annealing time).
``--clients`` concurrent clients (think virtual QPUs) each loop over submit -> poll state ->
fetch result through :class:`qflow.connectors.rest.RestQpuConnector`, so the figure includes
HTTP, JSON, the connector and the emulator's queue, not only the solver.

``tasks_per_s`` = tasks / wall time from the first submission to the last result;
``occupancy`` = QPU busy time / (last end - first start), from the emulator's /v1/stats
(1.0: the QPU never waited for work). Prints a table and writes JSON (default
benchmarks/results/emulator.json): ``{"emulator": {"tasks", "tasks_per_s", "occupancy", ...}}``.
Run: ``python benchmarks/emulator_throughput.py [--tasks 300] [--clients 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from qflow.connectors.rest import RestQpuConnector
from qflow.testing.qpu_services import serve

HERE = Path(__file__).resolve().parent
TOKEN_ENV = "QFLOW_BENCH_QPU_TOKEN"
POLL_S = 0.002


def random_qubo(n: int, seed: int) -> dict[str, Any]:
    """A small dense QUBO (sub-millisecond to anneal) with a fixed seed."""
    rng = random.Random(seed)
    terms = [[i, j, round(rng.uniform(-1, 1), 3)] for i in range(n) for j in range(i, n)]
    return {
        "kind": "qubo",
        "num_variables": n,
        "qubo": terms,
        "num_reads": 10,
        "num_sweeps": 100,
        "seed": seed,
    }


async def client(
    connector: RestQpuConnector, queue: asyncio.Queue[int], variables: int, latencies: list[float]
) -> None:
    """Submit, wait for and fetch tasks until the shared queue of task numbers is empty."""
    while not queue.empty():
        number = queue.get_nowait()
        begin = time.perf_counter()
        task_id = await connector.task_start(random_qubo(variables, number), f"bench-{number}")
        while (info := await connector.task_status(task_id)).state not in ("completed", "failed"):
            await asyncio.sleep(POLL_S)
        if info.state != "completed":
            raise SystemExit(f"task {number} failed: {info.message}")
        await connector.task_result(task_id)
        latencies.append(time.perf_counter() - begin)


async def qpu_stats(url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/stats", headers=headers) as r,
    ):
        r.raise_for_status()
        return await r.json()


async def measure(url: str, tasks: int, clients: int, variables: int) -> dict[str, Any]:
    config = RestQpuConnector.Config(connector="rest", url=url, token=f"${{env:{TOKEN_ENV}}}")
    connector = RestQpuConnector("emulator", config)
    await connector.start()
    try:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(tasks):
            queue.put_nowait(number)
        latencies: list[float] = []
        begin = time.perf_counter()
        await asyncio.gather(
            *(client(connector, queue, variables, latencies) for _ in range(clients))
        )
        wall = time.perf_counter() - begin
        stats = await qpu_stats(url, os.environ[TOKEN_ENV])
    finally:
        await connector.stop()
    span = stats["last_end"] - stats["first_start"]
    return {
        "tasks": tasks,
        "clients": clients,
        "variables": variables,
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "occupancy": stats["busy_seconds"] / span if span > 0 else 1.0,
        "qpu_s_per_task": stats["busy_seconds"] / tasks,
        "median_task_roundtrip_s": statistics.median(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--variables", type=int, default=12)
    parser.add_argument("--output", default=str(HERE / "results" / "emulator.json"))
    args = parser.parse_args(argv)
    token = secrets.token_urlsafe(24)
    os.environ[TOKEN_ENV] = token
    emulator = ["qflow.emulator", "--port", "0", "--time-scale", "0"]
    # stderr discarded: the emulator logs every task there, more than a pipe holds
    with serve(emulator, {"QFLOW_EMULATOR_TOKEN": token}, "qflow emulator listening on",
               stderr=subprocess.DEVNULL, grace=10) as url:  # fmt: skip
        result = asyncio.run(measure(url, args.tasks, args.clients, args.variables))
    rows = [
        ("tasks", f"{result['tasks']}"),
        ("clients", f"{result['clients']}"),
        ("QUBO variables", f"{result['variables']}"),
        ("wall (s)", f"{result['wall_s']:.2f}"),
        ("tasks/s", f"{result['tasks_per_s']:.1f}"),
        ("QPU occupancy", f"{result['occupancy']:.2f}"),
        ("QPU s/task", f"{result['qpu_s_per_task'] * 1000:.2f} ms"),
        ("median round trip", f"{result['median_task_roundtrip_s'] * 1000:.1f} ms"),
    ]
    print("emulator throughput (one QPU, superconducting, time_scale 0)")
    for name, value in rows:
        print(f"  {name:<20} {value:>12}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"emulator": result}, indent=2) + "\n")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
