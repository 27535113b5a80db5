"""The shared ``squeue`` snapshot (connectors/slurm_snapshot.py): the Slurm locations of all
of a user's runs on a host ask the controller once per ``squeue_interval``, not once each."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import pytest

from qflow.connectors.slurm import SlurmConnector
from qflow.connectors.slurm_jobs import SlurmJobs
from qflow.connectors.slurm_snapshot import ENV_DIR

pytestmark = pytest.mark.slurm


def location(cluster: Any, name: str, interval: float) -> SlurmConnector:
    config = SlurmConnector.Config(connector="slurm", slurm_conf=str(cluster.conf),
                                   partition="compute", squeue_interval=interval)  # fmt: skip
    return SlurmConnector(name, config)


def test_runs_on_one_cluster_share_one_squeue(
    slurm_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "snapshots"))
    asked: list[float] = []
    real_squeue = SlurmJobs.squeue

    async def counted(self: SlurmJobs, *args: Any, **kwargs: Any) -> Any:
        asked.append(time.time())
        return await real_squeue(self, *args, **kwargs)

    monkeypatch.setattr(SlurmJobs, "squeue", counted)
    first, second = location(slurm_cluster, "a", 1.0), location(slurm_cluster, "b", 1.0)
    other_cluster = SlurmConnector(
        "c", SlurmConnector.Config(connector="slurm", slurm_conf=str(tmp_path / "other.conf"))
    )
    assert first.snapshots.path == second.snapshots.path != other_cluster.snapshots.path
    jobid = slurm_cluster.run("sbatch", "--parsable", "--partition=compute",
                              f"--output={tmp_path}/job.out", "--wrap",
                              "sleep 30").strip().split(";")[0]  # fmt: skip
    try:

        async def main() -> None:
            seen = await first.snapshots.current()
            assert jobid in seen.infos and seen.infos[jobid].state in ("PENDING", "RUNNING")
            assert len(asked) == 1
            shared = await second.snapshots.current()  # another location, another run
            assert len(asked) == 1 and shared.taken == seen.taken and jobid in shared.infos
            # another run is refreshing it right now: the last one is good enough meanwhile
            await asyncio.sleep(1.1)
            fd = os.open(first.snapshots.path.with_suffix(".lock"), os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                assert (await second.snapshots.current()).taken == seen.taken
            finally:
                os.close(fd)
            assert len(asked) == 1
            newer = await second.snapshots.current()  # older than squeue_interval: asked again
            assert len(asked) == 2 and newer.taken > seen.taken and jobid in newer.infos

        asyncio.run(main())
    finally:
        slurm_cluster.run("scancel", jobid)
