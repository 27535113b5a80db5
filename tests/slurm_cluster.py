"""A real Slurm cluster on this host for tests (``deployments/local-slurm/cluster.sh``).

:func:`start_cluster` runs ``cluster.sh start DIR`` and returns a :class:`SlurmCluster`;
:func:`stop_cluster` runs ``cluster.sh stop DIR`` (idempotent). Both raise
:class:`ClusterUnavailable` with the reason when this host cannot run one (not root, no
Debian packages and no way to install them, daemons that do not come up), which the
``slurm_cluster`` fixture of ``conftest_slurm`` turns into a skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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


# -- an sshd on 127.0.0.1, for the connector's `login` mode --------------------------------


@dataclasses.dataclass
class SshServer:
    """A private sshd on 127.0.0.1 that accepts root with its own key."""

    dir: Path
    port: int
    login: str
    key: Path
    """The client's private key."""
    known_hosts: Path
    """A known_hosts file that already holds the server's host key."""
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        kill_tree(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start_sshd(directory: Path) -> SshServer:
    """Start Debian's sshd (installing openssh-server if needed) with its own keys and config.

    Raises :class:`ClusterUnavailable` when that is impossible here.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("a private sshd that accepts root needs root")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        if shutil.which("apt-get") is None:
            raise ClusterUnavailable("openssh-server is not installed and apt-get is missing")
        proc = subprocess.run(
            "apt-get update && apt-get install -y --no-install-recommends openssh-server",
            shell=True,
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            timeout=START_TIMEOUT_S,
        )
        if proc.returncode != 0 or not os.access(sshd, os.X_OK):
            raise ClusterUnavailable(f"cannot install openssh-server: {proc.stderr[-500:]}")
    directory.mkdir(parents=True, exist_ok=True)
    hostkey, key = directory / "host_ed25519", directory / "id_ed25519"
    for path in (hostkey, key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
            check=True,
            capture_output=True,
        )
    (directory / "authorized_keys").write_text((directory / "id_ed25519.pub").read_text())
    port = free_port()
    host_pub = (directory / "host_ed25519.pub").read_text().split()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hostkey}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = open(directory / "sshd.log", "wb")  # noqa: SIM115 - sshd writes it while it runs
    process = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    server = SshServer(directory, port, "root@127.0.0.1", key, known_hosts, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.05)
    server.stop()
    raise ClusterUnavailable(
        f"sshd did not start: {(directory / 'sshd.log').read_text(errors='replace')[-500:]}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (found through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    todo, tree = [pid], []
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    for member in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
