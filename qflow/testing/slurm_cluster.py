"""A real Slurm cluster on this host, for tests and benchmarks (``deployments/local-slurm/
cluster.sh``).

:func:`start_cluster` runs ``cluster.sh start DIR`` and returns a :class:`SlurmCluster`;
:func:`stop_cluster` runs ``cluster.sh stop DIR`` (idempotent: it kills every process of that
cluster by the PIDs in its directory). :func:`start_cluster` raises :class:`ClusterUnavailable`
with the reason when this host cannot run one (not root, no Debian packages and no way to
install them, daemons that do not come up), which the ``slurm_cluster`` fixture of
:mod:`qflow.testing.pytest_plugin` turns into a skip.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qflow.testing.processes import REPO

CLUSTER_SH = REPO / "deployments" / "local-slurm" / "cluster.sh"
START_TIMEOUT_S = 600
"""cluster.sh may install the Debian packages first (apt-get update + install)."""
STOP_TIMEOUT_S = 60


class ClusterUnavailable(RuntimeError):
    """This host cannot run the test cluster; the message says why."""


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster."""

    dir: Path
    """The cluster's directory (slurm.conf, logs, pid files, jobcomp.txt)."""
    conf: Path
    """Its slurm.conf."""
    env: dict[str, str]
    """A copy of ``os.environ`` with ``SLURM_CONF`` set, for Slurm commands run by tests."""

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """Run a Slurm command against this cluster, return its stdout."""
        proc = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def active_jobs(self) -> list[str]:
        """Ids of the jobs ``squeue`` shows by default (pending, running, completing)."""
        return self.run("squeue", "--noheader", "--format=%i").split()


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None when it is worth trying."""
    if not sys.platform.startswith("linux"):
        return f"a local Slurm cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "starting a local Slurm cluster needs root (slurmd and munged run as root)"
    if shutil.which("bash") is None:
        return "bash is missing"
    if not CLUSTER_SH.is_file():
        return f"{CLUSTER_SH} is missing (qflow.testing runs from a source checkout)"
    have = all(
        shutil.which(b) or os.access(f"/usr/sbin/{b}", os.X_OK)
        for b in ("slurmctld", "slurmd", "munged", "sbatch")
    )
    if not have and shutil.which("apt-get") is None:
        return (
            "Slurm (slurmctld, slurmd, slurm-client, munge) is not installed and apt-get is missing"
        )
    return None


def start_cluster(directory: Path) -> SlurmCluster:
    """``cluster.sh start DIR``; raises :class:`ClusterUnavailable` when it cannot start."""
    reason = unavailable_reason()
    if reason:
        raise ClusterUnavailable(reason)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SH), "start", str(directory)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        stop_cluster(directory)
        raise ClusterUnavailable(f"cluster.sh start took more than {exc.timeout:.0f} s") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("export SLURM_CONF="):
        stop_cluster(directory)
        detail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise ClusterUnavailable(
            f"cluster.sh start {directory} failed (exit {proc.returncode}):\n{detail}"
        )
    conf = Path(lines[-1].split("=", 1)[1])
    env = {**os.environ, "SLURM_CONF": str(conf)}
    return SlurmCluster(dir=directory, conf=conf, env=env)


def stop_cluster(directory: Path) -> None:
    """``cluster.sh stop DIR``: kills every process of that cluster, removes its /tmp dir."""
    subprocess.run(
        ["bash", str(CLUSTER_SH), "stop", str(directory)],
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S,
        check=False,
    )
