"""Real QPU service processes for tests: the emulator and a site-wide gateway, stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serve(args: list[str], env: dict[str, str], banner: str) -> Iterator[str]:
    """Start ``python -m <args>`` and yield the URL it announces on its first stdout line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if banner not in line:
            proc.kill()
            raise RuntimeError(f"{args[0]} did not start: {line}{proc.stderr.read()}")
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def emulator(token: str, time_scale: float = 1.0, offline: bool = False) -> Iterator[str]:
    args = ["qflow.emulator", "--port", "0", "--time-scale", str(time_scale)]
    with serve(args + (["--offline"] if offline else []), {"QFLOW_EMULATOR_TOKEN": token},
               "qflow emulator listening on") as url:  # fmt: skip
        yield url


def emulator_stats(url: str, token: str) -> dict:
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
