"""The background load of the contended strategy benchmark (benchmarks/background_load.py):
a seeded stream from Lublin & Feitelson's workload model, and its replay on a real cluster."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "background_load", REPO / "benchmarks" / "background_load.py"
)
assert _spec is not None and _spec.loader is not None
bg = importlib.util.module_from_spec(_spec)
sys.modules["background_load"] = bg  # dataclasses look their module up
_spec.loader.exec_module(bg)

QUICK = {"duration_s": 300.0, "time_scale": 0.025, "max_runtime_s": 15.0}


def test_a_seed_gives_one_stream_and_another_seed_another():
    first = bg.generate(0.7, seed=1, **QUICK)
    assert bg.generate(0.7, seed=1, **QUICK) == first
    assert bg.generate(0.7, seed=2, **QUICK).jobs != first.jobs


@pytest.mark.parametrize("utilisation", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_stream_offers_the_target_utilisation(utilisation: float, seed: int):
    stream = bg.generate(utilisation, seed=seed, **QUICK)
    work = sum(j.nodes * j.runtime_s for j in stream.jobs)
    assert work / (3 * stream.duration_s) == pytest.approx(utilisation, rel=0.01)
    assert stream.duration_s >= QUICK["duration_s"]
    arrivals = [j.arrival_s for j in stream.jobs]
    assert arrivals == sorted(arrivals) and arrivals[-1] < stream.duration_s
    # the pre-fill starts the partition at the target: round(U x 3) nodes busy at t=0
    assert sum(j.nodes for j in stream.prefill) == round(utilisation * 3)


def test_jobs_fit_the_partition_and_follow_the_models_shape():
    stream = bg.generate(0.9, seed=4, duration_s=20000.0, time_scale=0.1, max_runtime_s=60.0)
    jobs = stream.jobs + stream.prefill
    assert all(1 <= j.nodes <= 3 and 0 < j.runtime_s <= 60.0 for j in jobs)
    sizes = [j.nodes for j in stream.jobs]
    # most jobs of a 128-node machine take under a third of it; some take all of it
    assert sizes.count(1) > 0.7 * len(sizes) and sizes.count(3) > 0
    # the model's hyper-gamma: most jobs in its short mode (a minute or so of model time,
    # seconds here), a fifth or so in its long one (hours: at the cap here)
    runtimes = [j.runtime_s for j in stream.jobs]
    assert sum(r < 10.0 for r in runtimes) > 0.4 * len(runtimes)
    assert 0.1 * len(runtimes) < sum(r == 60.0 for r in runtimes) < 0.4 * len(runtimes)


def test_a_stream_written_as_json_reads_back_the_same(tmp_path: Path):
    stream = bg.generate(0.7, seed=5, **QUICK)
    path = tmp_path / "stream.json"
    path.write_text(stream.to_json())
    assert bg.Stream.from_json(path.read_text(), str(path)) == stream
    with pytest.raises(ValueError, match=r"stream.json: not a background stream"):
        bg.Stream.from_json('{"seed": 1}', "stream.json")


def test_bad_utilisation_is_refused():
    with pytest.raises(ValueError, match="must be in"):
        bg.generate(1.2, seed=1, **QUICK)


@pytest.mark.slurm
def test_a_replay_submits_its_jobs_and_leaves_nothing_behind(slurm_cluster: Any, tmp_path: Path):
    jobs = [bg.Job(0.0, 1, 30.0), bg.Job(0.3, 2, 30.0), bg.Job(0.6, 3, 30.0)]
    stream = bg.Stream(7, 0.9, 3, 10.0, prefill=[bg.Job(0.0, 1, 30.0)], jobs=jobs)
    replay = bg.Replay(stream, slurm_cluster.env, tmp_path / "out")
    try:
        replay.start()  # returns once the pre-fill runs
        assert len(replay.mine("RUNNING")) == 1
        deadline = time.monotonic() + 10
        while replay.submitted < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert replay.submitted == 4 and len(replay.mine()) == 4
        names = slurm_cluster.run("squeue", "--noheader", "--format=%j").split()
        assert names == [replay.name] * 4 and replay.name.startswith("qflow-bg-7-")
    finally:
        replay.stop()
    assert slurm_cluster.active_jobs() == []
