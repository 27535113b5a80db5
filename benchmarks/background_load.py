"""Other users' jobs on the local Slurm cluster's compute partition: a contended cluster.

A stream of rigid jobs (arrival time, nodes, run time) drawn from Lublin & Feitelson's model
of parallel supercomputer workloads ("The workload on parallel supercomputers: modeling the
characteristics of rigid jobs", JPDC 63(11), 2003; the model's parameters for its whole
sample, jobs not split into batch and interactive):

* inter-arrival times: ``exp(g)`` seconds, ``g`` ~ gamma(10.2303 x 1.0225, 0.4871) — the
  rush-hour arrivals (the model's daily cycle is left out: a benchmark lasts minutes);
* sizes on its 128-node machine: serial with probability 0.244, else ``2**u`` with ``u`` from
  a two-stage uniform (0.8..4.5 with probability 0.86, else 4.5..7), rounded to a power of two
  for 0.576 of all jobs;
* run times: ``exp(h)`` seconds, ``h`` hyper-gamma: gamma(4.2, 0.94) with probability
  ``p = -0.0054 x nodes + 0.78`` (clamped to 0..1), else gamma(312, 0.03) — bigger jobs run
  longer.

Scaled to this cluster: nodes x 3/128 rounded up (the fraction of the machine a job takes);
times x ``time_scale`` (the strategy benchmark's 1/10, and its ``--quick`` 1/40), run times
capped at ``max_runtime_s``; then the arrival times are stretched or compressed by one factor
so that the offered load, sum(nodes x run time) / (partition nodes x stream length), is the
target utilisation exactly. A *pre-fill* (jobs of the same model, already part-way through
their run) occupies round(target x nodes) nodes at t=0, so a run starts on a busy partition.

:class:`Replay` submits a stream against a cluster from t=0 (``sbatch --exclusive --wrap
"sleep T"`` under one job name per replay, ``qflow-bg-...``) in a thread, and on ``stop()`` (also
on an exception: it is a context manager) cancels its jobs by that name and waits until none
is left in ``squeue``. Run alone it prints a stream's summary:
``python benchmarks/background_load.py --utilisation 0.7 [--seed 1] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

MODEL_NODES = 128
"""The model's machine (its UHI = 7)."""
SERIAL_PROB, POW2_PROB = 0.244, 0.576
ULOW, UMED, UHI, UPROB = 0.8, 4.5, 7.0, 0.86
A1, B1, A2, B2, PA, PB = 4.2, 0.94, 312.0, 0.03, -0.0054, 0.78
AARR, BARR, ARAR = 10.2303, 0.4871, 1.0225
TOO_MUCH_LOG_TIME = math.log(64 * 3600)
"""The model redraws log run times above this (its TOO_MUCH_TIME)."""
PARTITION_NODES = 3
NAME_PREFIX = "qflow-bg-"


@dataclasses.dataclass(frozen=True)
class Job:
    """One other user's job: submitted at ``arrival_s`` from the replay's start."""

    arrival_s: float
    nodes: int
    runtime_s: float


@dataclasses.dataclass(frozen=True)
class Stream:
    """A generated background stream: the pre-fill (at t=0) and the arrivals after it."""

    seed: int
    utilisation: float
    nodes: int
    duration_s: float
    prefill: list[Job]
    jobs: list[Job]

    def offered_utilisation(self) -> float:
        """sum(nodes x run time) of the arrivals / (partition nodes x stream length)."""
        work = sum(j.nodes * j.runtime_s for j in self.jobs)
        return work / (self.nodes * self.duration_s)

    def summary(self) -> dict[str, Any]:
        sizes = [j.nodes for j in self.jobs]
        runtimes = [j.runtime_s for j in self.jobs]
        return {
            "seed": self.seed,
            "target_utilisation": self.utilisation,
            "offered_utilisation": round(self.offered_utilisation(), 4),
            "duration_s": round(self.duration_s, 1),
            "jobs": len(self.jobs),
            "prefill_jobs": len(self.prefill),
            "prefill_nodes": sum(j.nodes for j in self.prefill),
            "size_counts": {str(n): sizes.count(n) for n in range(1, self.nodes + 1)},
            "runtime_s": {
                "mean": round(statistics.mean(runtimes), 2),
                "median": round(statistics.median(runtimes), 2),
                "max": round(max(runtimes), 2),
            },
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<stream>") -> Stream:
        try:
            data = json.loads(text)
            return cls(**{**data, "prefill": [Job(**j) for j in data["prefill"]],
                          "jobs": [Job(**j) for j in data["jobs"]]})  # fmt: skip
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{source}: not a background stream ({exc}). Fix: write it with "
                             "benchmarks/background_load.py --json FILE") from exc  # fmt: skip


def _two_stage_uniform(rng: random.Random) -> float:
    if rng.random() <= UPROB:
        return rng.uniform(ULOW, UMED)
    return rng.uniform(UMED, UHI)


def model_nodes(rng: random.Random) -> int:
    """A job's size on the model's 128-node machine."""
    u = rng.random()
    if u <= SERIAL_PROB:
        return 1
    par = _two_stage_uniform(rng)
    if u <= SERIAL_PROB + POW2_PROB:
        par = round(par)
    return round(2**par)


def model_runtime(rng: random.Random, nodes: int) -> float:
    """A job's run time (s) on the model's machine: hyper-gamma in log space, by size."""
    p = min(1.0, max(0.0, PA * nodes + PB))
    while True:
        h = rng.gammavariate(A1, B1) if rng.random() <= p else rng.gammavariate(A2, B2)
        if h <= TOO_MUCH_LOG_TIME:
            return math.exp(h)


def model_interarrival(rng: random.Random) -> float:
    return math.exp(rng.gammavariate(AARR * ARAR, BARR))


def generate(
    utilisation: float,
    *,
    seed: int,
    duration_s: float,
    time_scale: float,
    max_runtime_s: float,
    nodes: int = PARTITION_NODES,
) -> Stream:
    """A stream of at least ``duration_s`` (scaled seconds) offering ``utilisation``."""
    if not 0 < utilisation < 1:
        raise ValueError(f"utilisation {utilisation}: must be in (0, 1)")
    rng = random.Random(seed)

    def draw() -> tuple[int, float]:
        size = model_nodes(rng)
        runtime = min(max_runtime_s, model_runtime(rng, size) * time_scale)
        return math.ceil(size * nodes / MODEL_NODES), runtime

    gaps: list[float] = []
    drawn: list[tuple[int, float]] = []
    while True:  # arrivals until the (rescaled) stream covers duration_s
        gaps.append(model_interarrival(rng) * time_scale)
        drawn.append(draw())
        work = sum(n * r for n, r in drawn)
        length = work / (nodes * utilisation)  # the length at which the load is the target
        if length >= duration_s and len(drawn) >= 2:
            break
    stretch = length / sum(gaps)  # arrival i at the sum of the gaps before it, rescaled
    arrivals = [stretch * sum(gaps[:i]) for i in range(len(gaps))]
    jobs = [Job(round(a, 3), n, round(r, 3)) for a, (n, r) in zip(arrivals, drawn, strict=True)]
    prefill: list[Job] = []
    while sum(j.nodes for j in prefill) < round(utilisation * nodes):
        size, runtime = draw()
        size = min(size, round(utilisation * nodes) - sum(j.nodes for j in prefill))
        prefill.append(Job(0.0, size, round(rng.uniform(0.1, 1.0) * runtime, 3)))
    return Stream(seed, utilisation, nodes, length, prefill, jobs)


class Replay:
    """Submits a :class:`Stream` to a cluster from t=0 in a thread; ``stop()`` cancels every
    job it submitted (by its job name) and waits until ``squeue`` shows none of them."""

    def __init__(self, stream: Stream, env: dict[str, str], workdir: Path,
                 partition: str = "compute") -> None:  # fmt: skip
        self.stream, self.env, self.workdir, self.partition = stream, env, workdir, partition
        self.name = f"{NAME_PREFIX}{stream.seed}-{uuid.uuid4().hex[:6]}"
        self.submitted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _slurm(self, *argv: str) -> str:
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def _submit(self, job: Job) -> None:
        # no --time: Slurm limits are whole minutes, which at this time scale would let
        # backfill pass every later job ahead of a pending one; the queue stays in order
        self._slurm(
            "sbatch",
            "--parsable",
            f"--partition={self.partition}",
            f"--job-name={self.name}",
            f"--nodes={job.nodes}",
            "--exclusive",
            f"--output={self.workdir / 'bg-%j.out'}",
            f"--wrap=sleep {job.runtime_s}",
        )
        self.submitted += 1

    def mine(self, state: str | None = None) -> list[str]:
        """Ids of this replay's jobs in ``squeue`` (in ``state`` when given)."""
        argv = ["squeue", "--noheader", "--format=%i", f"--name={self.name}"]
        return self._slurm(*argv, *([f"--states={state}"] if state else [])).split()

    def start(self, prefill_timeout_s: float = 15.0) -> None:
        """Submit the pre-fill, wait until it runs (batch jobs start on Slurm's tick), then
        replay the arrivals from now on in the background."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for job in self.stream.prefill:
            self._submit(job)
        deadline = time.monotonic() + prefill_timeout_s
        while len(self.mine("RUNNING")) < len(self.stream.prefill):
            if time.monotonic() > deadline:
                break  # the partition may be busy with someone else's jobs: go on anyway
            time.sleep(0.1)
        self._thread = threading.Thread(target=self._replay, name=self.name, daemon=True)
        self._thread.start()

    def _replay(self) -> None:
        t0 = time.monotonic()
        for job in self.stream.jobs:
            if self._stop.wait(max(0.0, t0 + job.arrival_s - time.monotonic())):
                return
            self._submit(job)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop submitting, cancel this replay's jobs, wait until squeue has none left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout_s
        while self.mine():
            self._slurm("scancel", f"--name={self.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"background jobs {self.name} still in squeue after "
                                   f"{timeout_s:.0f} s")  # fmt: skip
            time.sleep(0.2)

    def __enter__(self) -> Replay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utilisation", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=900.0, help="stream length, s")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--max-runtime", type=float, default=60.0, help="cap, scaled s")
    parser.add_argument("--json", help="write the job list here")
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also replay it on a local cluster for --duration s (needs root)",
    )
    args = parser.parse_args(argv)
    stream = generate(args.utilisation, seed=args.seed, duration_s=args.duration,
                      time_scale=args.time_scale, max_runtime_s=args.max_runtime)  # fmt: skip
    print(json.dumps(stream.summary(), indent=1))
    if args.json:
        Path(args.json).write_text(stream.to_json())
    if args.replay:
        import tempfile

        from qflow.testing.slurm_cluster import start_cluster, stop_cluster

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: cancel, stop
        with tempfile.TemporaryDirectory(prefix="qflow-bg-") as tmp:
            cluster = start_cluster(Path(tmp) / "cluster")
            try:
                with Replay(stream, cluster.env, Path(tmp) / "out") as replay:
                    time.sleep(args.duration)
                print(f"replayed: {replay.submitted} jobs submitted, none left in squeue")
            finally:
                stop_cluster(Path(tmp) / "cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
