"""Where a Slurm location's commands run: this host (:class:`LocalTransport`) or a login node
over SSH (:class:`~qflow.connectors.slurm_ssh.SshTransport`).

A transport runs Slurm's commands (``sbatch``, ``squeue``, ...) with a minimal environment
and touches the location's work directory (exit-status files, logs, captured output), so the
rest of the connector never cares on which host those live.

Environment: the Slurm commands get PATH, HOME, USER, LOGNAME, LANG, LC_ALL, TZ and
``SLURM_CONF`` of qflow's environment, nothing else, so nothing of the orchestrator's
environment reaches the jobs (``sbatch --export=ALL`` exports that minimal environment; see
slurm_script.py for what the batch script then makes of it).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qflow.connectors.slurm_config import SlurmConfig
from qflow.connectors.slurm_script import safe_name

_T = TypeVar("_T")

COMMAND_TIMEOUT_S = 60.0
"""Longest wait for one Slurm command (``sbatch``, ``squeue``, ...)."""
_COMMAND_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
"""Variables of the orchestrator's environment the Slurm commands get (nothing else)."""


class SlurmError(RuntimeError):
    """A Slurm command failed (submission refused, controller unreachable, ...)."""


class Transport(abc.ABC):
    """Runs Slurm commands and touches the work directory: on this host or over SSH."""

    def __init__(self, cfg: SlurmConfig) -> None:
        self.cfg = cfg
        self.slurm_env: dict[str, str] = {}
        """Variables set for every Slurm command (``SLURM_CONF``)."""
        conf = cfg.slurm_conf or (None if cfg.login else os.environ.get("SLURM_CONF"))
        if conf:
            self.slurm_env["SLURM_CONF"] = conf

    async def open(self) -> None:  # noqa: B027 - optional
        """Set up the channel (the SSH master connection)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Tear the channel down."""

    @abc.abstractmethod
    async def run(
        self,
        argv: list[str],
        *,
        query: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        """Run a Slurm command; ``query`` adds ``SLURM_TIME_FORMAT=%s`` (epoch seconds).

        ``timeout=None`` is for commands that legitimately wait (a pending ``salloc``, a step's
        ``srun``); login mode ignores it (its remote shells have their own limit)."""

    @abc.abstractmethod
    async def read(self, path: str) -> bytes | None:
        """A file's content, None if it cannot be read."""

    @abc.abstractmethod
    async def remove(self, paths: list[str]) -> None:
        """Remove files (missing ones are fine)."""

    @abc.abstractmethod
    async def make_workdir(self, configured: str | None, location: str) -> tuple[str, bool]:
        """Create the work directory; returns its absolute path and whether it is our own."""

    @abc.abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Remove our own work directory."""

    @abc.abstractmethod
    async def which(self, name: str) -> str | None:
        """Absolute path of a command where the Slurm commands run."""


class LocalTransport(Transport):
    """Slurm's commands on this host, with a minimal environment (see the module doc)."""

    def __init__(self, cfg: SlurmConfig) -> None:
        super().__init__(cfg)
        env = {k: os.environ[k] for k in _COMMAND_ENV if k in os.environ}
        path = env.get("PATH", "")
        extra = [p for p in ("/usr/local/bin", "/usr/bin", "/bin") if p not in path.split(":")]
        env["PATH"] = ":".join([p for p in [path, *extra] if p])
        if "SLURM_CONF" in self.slurm_env:
            self.slurm_env["SLURM_CONF"] = str(Path(self.slurm_env["SLURM_CONF"]).expanduser())
        self.env = {**env, **self.slurm_env}
        self.query_env = {**self.env, "SLURM_TIME_FORMAT": "%s"}

    async def run(
        self,
        argv: list[str],
        *,
        query: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = COMMAND_TIMEOUT_S,
    ) -> tuple[int, str, str]:
        env = self.query_env if query else self.env
        return await run_command(argv, env=env, stdin=stdin, timeout=timeout)

    async def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except OSError:
            return None

    async def remove(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()

    async def make_workdir(self, configured: str | None, location: str) -> tuple[str, bool]:
        if configured:
            path = Path(configured).expanduser().absolute()
            path.mkdir(parents=True, exist_ok=True)
            return str(path), False
        return tempfile.mkdtemp(prefix=f"qflow-jobs-{safe_name(location)}-"), True

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
