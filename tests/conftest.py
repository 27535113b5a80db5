"""Shared fixtures: paths, deployments written on the fly, running qflow in-process or as a CLI.

The services tests start for real (Slurm cluster, HyperQueue server, QPU emulator and gateway)
and their fixtures (``slurm_cluster``, ``hq_server``) are in the ``qflow.testing`` package,
which the benchmarks use too.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qflow.connector import Connector
from qflow.deployment import Deployment, parse_deployment
from qflow.engine.runner import RunResult, run_cwl
from qflow.registry import registry

# the session-scoped real services: slurm_cluster, hq_server
pytest_plugins = ["qflow.testing.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _own_placement_history(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Each test keeps its placement history (XDG_STATE_HOME) and its shared ``squeue``
    snapshots to itself, so its estimates and its view of Slurm never come from another
    test or from this machine's own runs."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
    monkeypatch.setenv("QFLOW_SQUEUE_SNAPSHOTS", str(tmp_path_factory.mktemp("squeue")))


def deployment_from(text: str, source: str = "test-deployment.yml") -> Deployment:
    return parse_deployment(textwrap.dedent(text), source)


def run_in_process(
    workflow: Path, deployment: Deployment, outdir: Path, *job_args: str
) -> tuple[RunResult, dict | None]:
    """Run through the same path as ``qflow run`` (minus the CLI), return result and outputs."""
    out = io.StringIO()
    argv = ["--quiet", "--outdir", str(outdir), str(workflow), *job_args]
    result = run_cwl(argv, deployment, stdout=out, report_path=str(outdir / "qflow-report.json"))
    text = out.getvalue().strip()
    return result, (json.loads(text) if text else None)


def qflow_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real ``qflow`` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "qflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kwargs.pop("cwd", REPO),
        env=kwargs.pop("env", os.environ.copy()),
        **kwargs,
    )


def qflow_interruptible(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start the real ``qflow`` in the background, for tests that send it SIGINT.

    A shell starts a background job (``pytest ... &``) with SIGINT ignored and children inherit
    that, so Python would install no KeyboardInterrupt handler: the child puts it back first,
    as at a terminal (in the child itself: a ``preexec_fn`` is unsafe with threads around).
    """
    restore = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
    return subprocess.Popen(
        [sys.executable, "-c", f"{restore}; import sys, qflow.cli; sys.exit(qflow.cli.main())",
         *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )  # fmt: skip


@pytest.fixture
def register_connector() -> Iterator:
    """Register connector classes under test names for one test, then remove them."""
    added: list[str] = []

    def add(name: str, cls: type[Connector]) -> None:
        registry()[name] = cls  # type: ignore[assignment]
        added.append(name)

    yield add
    for name in added:
        registry().pop(name, None)
