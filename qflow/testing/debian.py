"""Debian packages the test set-up installs (Slurm, munge, podman, openssh-server), one
``apt-get`` at a time on this host.

Tests may run in parallel worker processes (pytest-xdist), each starting its own services
on a fresh machine; two ``apt-get`` runs at once would fail on dpkg's lock. Every install
holds :data:`APT_LOCK` (deployments/local-slurm/cluster.sh takes the same file with
``flock``) and waits for other apt users through ``DPkg::Lock::Timeout``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

APT_LOCK = Path("/var/lock/qflow-apt.lock")
LOCK_TIMEOUT_S = 600


def apt_install(*packages: str, timeout: float | None = None) -> None:
    """Install ``packages`` (``apt-get update`` first if the lists do not know them);
    raises :class:`subprocess.CalledProcessError` with apt's stderr when that fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT_S}"]
    install = ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages]
    APT_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(APT_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if subprocess.run(install, env=env, capture_output=True, timeout=timeout).returncode:
            for command in (["apt-get", *wait, "update", "-qq"], install):
                proc = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=timeout
                )
                if proc.returncode:
                    raise subprocess.CalledProcessError(
                        proc.returncode, command, proc.stdout, proc.stderr
                    )
