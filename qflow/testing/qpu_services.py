"""Real QPU service processes: the emulator and a site-wide gateway, stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from qflow.testing.processes import stop


@contextmanager
def serve(
    args: list[str],
    env: dict[str, str],
    banner: str,
    *,
    stderr: int | IO[Any] = subprocess.PIPE,
    grace: float = 15.0,
    new_session: bool = False,
) -> Iterator[str]:
    """Start ``python -m <args>`` (``env`` added to this process's environment) and yield the
    URL it announces on its first stdout line, which must contain ``banner``; on exit SIGTERM
    it by PID, SIGKILL after ``grace`` seconds.

    ``stderr``: where its stderr goes. A pipe by default, read into the error when it does not
    start (and otherwise never read: a service that logs more than a pipe holds, such as an
    emulator running hundreds of tasks, needs a file or ``subprocess.DEVNULL``).
    ``new_session``: in a session of its own, so a Ctrl-C at the terminal reaches only the
    caller, which stops it in turn.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **env},
        start_new_session=new_session,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if banner not in line:
            proc.kill()
            if proc.stderr is not None:
                detail = proc.stderr.read()
            else:
                detail = f" (its stderr: {stderr.name})" if hasattr(stderr, "name") else ""
            raise RuntimeError(f"{args[0]} did not start: {line}{detail}")
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        stop(proc, grace)


@contextmanager
def emulator(token: str, time_scale: float = 1.0, offline: bool = False) -> Iterator[str]:
    """A ``qflow emulator`` process (default backend) accepting ``token``; yields its URL."""
    args = ["qflow.emulator", "--port", "0", "--time-scale", str(time_scale)]
    with serve(args + (["--offline"] if offline else []), {"QFLOW_EMULATOR_TOKEN": token},
               "qflow emulator listening on") as url:  # fmt: skip
        yield url


def emulator_stats(url: str, token: str) -> dict:
    """The emulator's ``GET /v1/stats`` (every task it ran, busy time, first start, last end)."""
    request = urllib.request.Request(
        f"{url}/v1/stats", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def gateway_user_deployment(gateway_url: str, quantum_bindings: str, max_wait: float) -> str:
    """deployment.yml of a gateway's user: this host + the gateway's QPU (token in
    ``QFLOW_GATEWAY_ADMIN``); ``quantum_bindings`` is one binding line, e.g. ``/solve: qpu``."""
    return (
        textwrap.dedent(
            f"""\
        version: 1
        locations:
          local: {{connector: local, slots: 2}}
          qpu:
            connector: shared-qpu
            gateway: {gateway_url}
            gateway_token: ${{env:QFLOW_GATEWAY_ADMIN}}
            max_wait: {max_wait}
        bindings:
          default: local
        """
        )
        + f"  {quantum_bindings}\n"
    )
