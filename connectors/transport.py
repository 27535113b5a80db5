"""Where a connector's commands run: this host (:class:`LocalTransport`) or a login node over
SSH (:class:`~qflow.connectors.transport_ssh.SshTransport`).

A transport runs commands (no shell) with a minimal environment plus the variables its
connector sets for every command, and touches the files of a work directory there (exit-status
files, logs, captured output), so a connector never cares on which host those live. The Slurm
connector sits on one; any connector that drives a batch system's command line can.

Environment: commands get PATH, HOME, USER, LOGNAME, LANG, LC_ALL, TZ of qflow's environment
(on a login node: its own), the connector's variables and the call's, nothing else, so
nothing of the orchestrator's environment reaches the jobs.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

COMMAND_TIMEOUT_S = 60.0
"""Longest wait for one command (``sbatch``, ``squeue``, ...)."""
COMMAND_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
"""Variables of the orchestrator's environment the commands get (nothing else)."""


class TransportError(RuntimeError):
    """The transport itself failed (no SSH connection, no work directory)."""


class Transport(abc.ABC):
    """Runs commands and touches a work directory: on this host or over SSH."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.command_env = dict(env)
        """Variables set for every command (e.g. ``SLURM_CONF``), besides the minimal ones."""

    async def open(self) -> None:  # noqa: B027 - optional
        """Set up the channel (the SSH master connection)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Tear the channel down."""

    @abc.abstractmethod
    async def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        """Run a command with ``env`` added for this call; (exit status, stdout, stderr).

        ``timeout=None`` is for commands that legitimately wait (a pending ``salloc``, a step's
        ``srun``); over SSH it is ignored (the remote shells have their own limit)."""

    @abc.abstractmethod
    async def read(self, path: str) -> bytes | None:
        """A file's content, None if it cannot be read."""

    @abc.abstractmethod
    async def existing(self, paths: list[str]) -> set[str]:
        """Which of ``paths`` exist now (one call for all: a job's markers are looked at often)."""

    @abc.abstractmethod
    async def remove(self, paths: list[str]) -> None:
        """Remove files (missing ones are fine)."""

    @abc.abstractmethod
    async def make_workdir(self, configured: str | None, name: str) -> tuple[str, bool]:
        """Create the work directory (``configured``, else a new one named after ``name``);
        returns its absolute path and whether it is our own to remove."""

    @abc.abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Remove our own work directory."""

    @abc.abstractmethod
    async def which(self, name: str) -> str | None:
        """Absolute path of a command where the commands run."""


class LocalTransport(Transport):
    """Commands on this host, with a minimal environment (see the module doc)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        base = {k: os.environ[k] for k in COMMAND_ENV if k in os.environ}
        path = base.get("PATH", "")
        extra = [p for p in ("/usr/local/bin", "/usr/bin", "/bin") if p not in path.split(":")]
        base["PATH"] = ":".join([p for p in [path, *extra] if p])
        self.env = {**base, **self.command_env}

    async def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        full = {**self.env, **env} if env else self.env
        return await run_command(argv, env=full, stdin=stdin, timeout=timeout)

    async def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except OSError:
            return None

    async def existing(self, paths: list[str]) -> set[str]:
        return {path for path in paths if os.path.exists(path)}

    async def remove(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()

    async def make_workdir(self, configured: str | None, name: str) -> tuple[str, bool]:
        if configured:
            path = Path(configured).expanduser().absolute()
            path.mkdir(parents=True, exist_ok=True)
            return str(path), False
        return tempfile.mkdtemp(prefix=f"qflow-jobs-{name}-"), True

    async def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    async def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.env.get("PATH"))


async def run_command(
    argv: list[str],
    *,
    env: dict[str, str],
    stdin: bytes | None = None,
    timeout: float | None = COMMAND_TIMEOUT_S,
) -> tuple[int, str, str]:
    """Run a command (no shell); kill it if the caller is cancelled or it hangs."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        return 127, "", f"cannot run {argv[0]}: {exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (asyncio.CancelledError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()
        if isinstance(exc, TimeoutError):
            return 124, "", f"{argv[0]} did not answer within {timeout:.0f} s"
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def shielded(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run cleanup to its end even if the caller is cancelled again meanwhile; its result."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        raise
