"""A connector's commands on a login node over SSH (``login: user@host``).

One OpenSSH master connection (``ControlMaster``) and a few long-lived remote shells on it,
so a command costs about what it costs on the login node itself (no handshake, no start-up
files per command). The steps' paths (working directory, redirections, ``workdir``) must be
the same on the cluster (a shared filesystem); the default work directory is then
``~/.qflow/<connector>/...`` on the login node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from qflow.connectors.transport import (
    COMMAND_TIMEOUT_S,
    Transport,
    TransportError,
    run_command,
    shielded,
)

SSH_CONTROL_PERSIST_S = 120
"""An SSH master connection left behind by a crashed qflow exits after this many idle seconds."""
SSH_SESSIONS = 4
"""Remote shells (SSH channels) of one location running commands at the same time."""


@dataclass(frozen=True)
class SshLogin:
    """How to reach the login node: a connector's ``login`` keys."""

    login: str
    """``user@host``."""
    port: int | None = None
    key: str | None = None
    """Private key file (``~`` expanded); with it, only that key is offered."""
    options: tuple[str, ...] = ()
    """OpenSSH ``-o`` options, before qflow's own (ssh keeps the first value of an option)."""
    home_dir: str = ".qflow"
    """Where default work directories go, under the login node's home directory."""


class SshTransport(Transport):
    """Commands on a login node over SSH, without a handshake or shell start per call.

    ``open`` starts an OpenSSH master connection (``ControlMaster``) in the background. The
    commands then go through a small pool of long-lived remote shells (``/bin/sh`` reading
    its standard input, each an SSH channel of the master connection): a command costs what
    the command itself costs, not an ``ssh`` process plus the login shell's start-up
    files (``~/.bashrc`` is read once per shell; it was measured at 130 ms per command here).
    Each command runs as ``env -i PATH=... HOME=... USER=... LOGNAME=... [VARIABLES]
    COMMAND``, so the login node's environment does not reach the jobs either. ``close`` ends
    the shells and the master (``ssh -O exit``); if qflow dies, the master exits by itself
    after ``ControlPersist`` idle seconds and the shells with their connection.
    """

    def __init__(self, ssh: SshLogin, location: str, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self.ssh = ssh
        self.login = ssh.login
        self.location = location
        self._control_dir: str | None = None
        self._slots = asyncio.Semaphore(SSH_SESSIONS)
        self._idle: list[_RemoteShell] = []
        self._all: set[_RemoteShell] = set()

    def _options(self) -> list[str]:
        if self._control_dir is None:
            # short and private: the control socket path must stay under ~100 characters
            self._control_dir = tempfile.mkdtemp(prefix="qfssh-", dir="/tmp")
        # ssh takes the first value given for an option: the user's options come first
        opts = [arg for option in self.ssh.options for arg in ("-o", option)]
        opts += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ControlPath={self._control_dir}/%C",
            "-o",
            f"ControlPersist={SSH_CONTROL_PERSIST_S}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "ConnectTimeout=20",
        ]
        if self.ssh.port:
            opts += ["-p", str(self.ssh.port)]
        if self.ssh.key:
            opts += ["-i", str(Path(self.ssh.key).expanduser()), "-o", "IdentitiesOnly=yes"]
        return opts

    async def open(self) -> None:
        """Start the master connection (authenticates once; fails with ssh's message)."""
        opts = self._options()
        with tempfile.TemporaryFile() as errfile:
            # -f: ssh backgrounds itself after authentication; its stderr goes to a file,
            # not a pipe, because the master keeps it open for its whole life
            proc = await asyncio.create_subprocess_exec(
                "ssh",
                *opts,
                "-o",
                "ControlMaster=yes",
                "-f",
                "-N",
                self.login,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errfile,
            )
            try:
                rc = await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                rc = 255
            errfile.seek(0)
            err = errfile.read().decode(errors="replace").strip()
        if rc != 0:
            await self.close()
            raise TransportError(
                f"location {self.location}: cannot open SSH to {self.login}: {err or f'exit {rc}'}"
            )

    async def close(self) -> None:
        for shell in list(self._all):
            await shell.close()
        self._all.clear()
        self._idle.clear()
        if self._control_dir is None:
            return
        await run_command(["ssh", *self._options(), "-O", "exit", self.login], env=dict(os.environ))
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    async def _remote(self, command: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
        """Run a shell command line on the login node in one of the pooled shells."""
        async with self._slots:
            for attempt in range(2):
                shell = self._idle.pop() if self._idle else None
                try:
                    if shell is None:
                        shell = _RemoteShell(
                            ["ssh", *self._options(), "-o", "ControlMaster=no", "-T", self.login]
                        )
                        self._all.add(shell)
                        await shell.start()
                    result = await shell.request(command, stdin)
                except _ShellLost as exc:
                    if shell is not None:
                        self._all.discard(shell)
                        await shell.close()
                    if exc.sent or attempt == 1:  # a command may have run: never repeat it
                        return 255, b"", f"ssh to {self.login}: {exc}"
                    continue
                except BaseException:  # cancelled mid-command: the shell's output is unknown
                    if shell is not None:
                        self._all.discard(shell)
                        await shielded(shell.close())
                    raise
                self._idle.append(shell)
                return result
        raise AssertionError("unreachable")

    async def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        assigns = [f"{k}={v}" for k, v in {**self.command_env, **(env or {})}.items()]
        command = 'env -i PATH="$PATH" HOME="$HOME" USER="$USER" LOGNAME="$LOGNAME" ' + shlex.join(
            [*assigns, *argv]
        )
        rc, out, err = await self._remote(command, stdin)
        return rc, out.decode(errors="replace"), err

    async def read(self, path: str) -> bytes | None:
        rc, out, _ = await self._remote(shlex.join(["cat", "--", path]))
        return out if rc == 0 else None

    async def existing(self, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        test = 'for f in "$@"; do [ -e "$f" ] && printf "%s\\n" "$f"; done; true'
        _, out, _ = await self._remote(shlex.join(["sh", "-c", test, "sh", *paths]))
        return set(out.decode(errors="replace").splitlines()) & set(paths)

    async def remove(self, paths: list[str]) -> None:
        if paths:
            await self._remote(shlex.join(["rm", "-f", "--", *paths]))

    async def make_workdir(self, configured: str | None, name: str) -> tuple[str, bool]:
        if configured:
            rel = configured[2:] if configured.startswith("~/") else None
            target = f'"$HOME"/{shlex.quote(rel)}' if rel else shlex.quote(configured)
            command = f"mkdir -p -- {target} && cd -- {target} && pwd -P"
            own = False
        else:
            base = f'"$HOME"/{shlex.quote(self.ssh.home_dir)}'
            pattern = f"{base}/{name}-XXXXXX"
            command = f"mkdir -p -- {base} && mktemp -d {pattern}"
            own = True
        rc, out, err = await self._remote(command)
        lines = out.decode(errors="replace").strip().splitlines()
        path = lines[-1] if lines else ""
        if rc != 0 or not path.startswith("/"):
            raise TransportError(
                f"location {self.location}: cannot create the work directory on {self.login}: "
                f"{err.strip() or f'exit {rc}'}"
            )
        return path, own

    async def remove_tree(self, path: str) -> None:
        await self._remote(shlex.join(["rm", "-rf", "--", path]))

    async def which(self, name: str) -> str | None:
        rc, out, _ = await self._remote(f"command -v {shlex.quote(name)}")
        path = out.decode(errors="replace").strip()
        return path if rc == 0 and path.startswith("/") else None


class _ShellLost(Exception):
    """The remote shell went away; ``sent`` tells whether the command may have run."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _RemoteShell:
    """One long-lived ``/bin/sh`` on the login node, fed commands on its standard input.

    Each command's output is framed: the shell runs it with stdout/stderr to files in a
    private temporary directory, then prints ``<marker> <status> <out bytes> <err bytes>``
    followed by both files, so any output (binary or not) comes back intact and lines that
    start-up files print are skipped.
    """

    _PRELUDE = (
        'T=$(mktemp -d "${TMPDIR:-/tmp}/qflow-sh-XXXXXX") || exit 1\n'
        "trap 'rm -rf \"$T\"' EXIT\n"
        "trap 'exit 1' HUP INT TERM PIPE\n"
    )

    def __init__(self, ssh_argv: list[str]) -> None:
        self.ssh_argv = ssh_argv
        self.proc: asyncio.subprocess.Process | None = None
        self.token = uuid.uuid4().hex[:12]
        self.count = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.ssh_argv,
            "exec /bin/sh 2>/dev/null",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 20,
        )
        await self._write(self._PRELUDE.encode())
        rc, _, _ = await self.request(":")
        if rc != 0:
            raise _ShellLost("the remote shell did not start", sent=False)

    async def _write(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ShellLost(f"connection lost ({exc})", sent=False) from None

    async def request(self, command: str, stdin: bytes | None = None) -> tuple[int, bytes, str]:
        assert self.proc is not None and self.proc.stdout is not None
        self.count += 1
        marker = f"@@qflow-{self.token}-{self.count}"
        text = ""
        source = "/dev/null"
        if stdin is not None:
            body = stdin.decode()
            delimiter = f"QFLOW_EOF_{uuid.uuid4().hex}"
            text += f"cat > \"$T/in\" <<'{delimiter}'\n{body}"
            text += ("" if body.endswith("\n") else "\n") + f"{delimiter}\n"
            source = '"$T/in"'
        text += (
            f'{{ {command}\n}} < {source} > "$T/o" 2> "$T/e"; __qflow_s=$?; '
            f"printf '%s %d %d %d\\n' {marker} \"$__qflow_s\" "
            '$(($(wc -c < "$T/o"))) $(($(wc -c < "$T/e"))); cat "$T/o" "$T/e"\n'
        )
        await self._write(text.encode())
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise _ShellLost("connection closed", sent=True)
                    if line.startswith(marker.encode() + b" "):
                        break
                status, nout, nerr = (int(x) for x in line.split()[1:4])
                out = await self.proc.stdout.readexactly(nout)
                err = await self.proc.stdout.readexactly(nerr)
        except TimeoutError:
            raise _ShellLost(f"no answer within {COMMAND_TIMEOUT_S:.0f} s", sent=True) from None
        except (asyncio.IncompleteReadError, ValueError) as exc:
            raise _ShellLost(f"garbled answer ({exc})", sent=True) from None
        return status, out, err.decode(errors="replace")

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.close()  # the shell exits at end of input (and removes $T)
            try:
                await asyncio.wait_for(proc.wait(), 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
