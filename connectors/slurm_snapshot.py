"""One ``squeue`` for all of a user's qflow runs on a cluster: the pollers' safety net.

Every Slurm location's poller looks at ``squeue`` every ``squeue_interval`` for jobs that
Slurm ended before their script did. With N runs (or locations) on one submit host that was
N requests per interval to the controller. Now they share a snapshot file per cluster and
user: the first poller that finds it older than its interval takes the file's lock, asks for
all of the user's jobs in one request (``squeue --me``) and writes it; the others read it.

A job submitted after a snapshot was taken is simply not in it yet: callers compare with
:attr:`Snapshot.taken` before concluding a job left the queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from qflow.connectors.slurm_jobs import JobInfo, SlurmJobs

ENV_DIR = "QFLOW_SQUEUE_SNAPSHOTS"
"""Where the snapshots are kept (default: ``$XDG_RUNTIME_DIR/qflow``, else ~/.cache/qflow)."""


@dataclasses.dataclass
class Snapshot:
    """The user's jobs as ``squeue`` showed them, asked at ``taken`` (epoch seconds)."""

    taken: float
    infos: dict[str, JobInfo]


def snapshot_dir() -> Path:
    """The directory shared by this user's runs on this host."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache"
    return base / "qflow" / "squeue"


class SqueueSnapshots:
    """The snapshot of one cluster (``cluster``: what tells it apart, e.g. its slurm.conf
    path and login host), refreshed at most every ``max_age`` seconds by whichever run
    needs it first."""

    def __init__(self, jobs: SlurmJobs, cluster: str, max_age: float) -> None:
        self.jobs = jobs
        self.max_age = max_age
        key = hashlib.sha256(f"{os.getuid()}\0{cluster}".encode()).hexdigest()[:16]
        self.path = snapshot_dir() / f"{key}.json"

    async def current(self) -> Snapshot:
        """A snapshot at most ``max_age`` old: the shared one, or a new one taken now (if
        another run is taking one right now, the last one, however old)."""
        shared = self._read()
        if shared is not None and time.time() - shared.taken < self.max_age:
            return shared
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock() as locked:
            if not locked:
                return shared or Snapshot(0.0, {})
            shared = self._read()  # another run may have just refreshed it
            if shared is not None and time.time() - shared.taken < self.max_age:
                return shared
            taken = time.time()
            fresh = Snapshot(taken, await self.jobs.squeue())
            self._write(fresh)
            return fresh

    @contextlib.contextmanager
    def _lock(self) -> Iterator[bool]:
        """The refresher's lock, without waiting: False if another run holds it."""
        fd = os.open(self.path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> Snapshot | None:
        try:
            data = json.loads(self.path.read_text())
            infos = {jobid: JobInfo(**info) for jobid, info in data["jobs"].items()}
            return Snapshot(float(data["taken"]), infos)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: a new one is taken

    def _write(self, snapshot: Snapshot) -> None:
        jobs = {jobid: dataclasses.asdict(info) for jobid, info in snapshot.infos.items()}
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps({"taken": snapshot.taken, "jobs": jobs}))
        partial.replace(self.path)  # readers never see half a file
