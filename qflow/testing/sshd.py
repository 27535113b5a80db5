"""A private sshd on 127.0.0.1 that accepts root with its own key, for the Slurm connector's
``login`` mode (commands run on a login node over ssh) against the local test cluster.

:func:`start_sshd` raises :class:`~qflow.testing.slurm_cluster.ClusterUnavailable` when that is
impossible here; :meth:`SshServer.stop` kills the sshd's process tree by its PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from qflow.testing.debian import apt_install
from qflow.testing.processes import free_port, kill_tree
from qflow.testing.slurm_cluster import START_TIMEOUT_S, ClusterUnavailable


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
        try:
            apt_install("openssh-server", timeout=START_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            raise ClusterUnavailable(f"cannot install openssh-server: {exc.stderr[-500:]}") from exc
        if not os.access(sshd, os.X_OK):
            raise ClusterUnavailable(f"openssh-server is installed but {sshd} is missing")
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
