"""A qflow stand-in that a test kills with SIGKILL: one long step on one location.

``python tests/hq_slurm_crash_run.py CONFIG_JSON JOURNAL CWD COMMAND...`` starts the connector
of the location ``CONFIG_JSON`` describes (e.g. ``{"connector": "slurm", "allocation":
"held", ...}`` or ``{"connector": "hyperqueue", ...}``) with a real
:class:`~qflow.rundir.journal.Journal`, journals the step's execution as the engine does, runs
``COMMAND`` in ``CWD`` and prints ``started <external id>`` once it runs. It then waits for
the step: the test kills this process (a crash: nothing is cancelled or released) and checks
what the journal says is still alive. Tests run it with :func:`crash_once_started`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qflow.connector import Connector, ConnectorContext, JobSpec, Resources
from qflow.registry import connector_class
from qflow.rundir.journal import Journal


async def main(config_json: str, journal_path: str, cwd: str, command: list[str]) -> None:
    keys = json.loads(config_json)
    cls = connector_class(keys["connector"])
    assert issubclass(cls, Connector)
    connector = cls("crashed", cls.Config(**keys), ConnectorContext(Journal(Path(journal_path))))
    await connector.start()
    execution = connector.journal.intend("execution", "crashed", step="/long")
    job = JobSpec(
        name="long",
        step="/long",
        iteration=None,
        command=command,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
        stdin_path=None,
        stdout_path=f"{cwd}/long.out",
        stderr_path=f"{cwd}/long.err",
        resources=Resources(),
        execution_id=execution.id,
    )
    await connector.run(job, lambda external_id: print(f"started {external_id}", flush=True))


def crash_once_started(
    config: dict[str, Any],
    journal: Path,
    cwd: Path,
    command: list[str],
    running: Callable[[], bool],
) -> str:
    """Run the stand-in, SIGKILL it once its step started and ``running()`` holds (the command
    itself runs, not only its allocation or task); the step's external id."""
    argv = [sys.executable, __file__, json.dumps(config), str(journal), str(cwd), *command]
    errors = cwd / "crashed.err"
    with open(errors, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        timer = threading.Timer(60, proc.kill)  # a stand-in that never starts its step fails
        timer.start()
        line = (proc.stdout.readline() if proc.stdout else "").split()
        timer.cancel()
        deadline = time.monotonic() + 10
        while not running() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert line[:1] == ["started"], errors.read_text()
    return line[1]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
