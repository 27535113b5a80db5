"""A real HyperQueue server with one worker, in a helper process of its own.

The ``hyperqueue`` wheel runs the server and its workers inside a Python process
(``LocalCluster``). :func:`start_server` starts ``python -m qflow.testing.hq_server DIR --cores
N``: that helper starts a ``LocalCluster`` with ``server_dir=DIR`` and one worker with ``N``
cores, runs one probe task to completion (so the worker is really up) and writes
``DIR/ready.json``. Tests and qflow then connect with ``Client(DIR)``, as real users of a
running server do.

:func:`stop_server` sends SIGTERM to the helper by its PID; the helper's own SIGTERM handler
(a cluster ignores SIGTERM/SIGINT otherwise) stops the cluster, which kills running tasks,
and exits; SIGKILL if it does not within :data:`STOP_TIMEOUT_S`. The helper also stops when
the process that started it dies.

The session-scoped pytest fixture ``hq_server`` (in :mod:`qflow.testing.pytest_plugin`)
starts one server with a 2-core worker on first use and stops it at the end of the session;
where HyperQueue cannot run here the tests that use it are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
READY_FILE = "ready.json"
LOG_FILE = "helper.log"


class HqUnavailable(RuntimeError):
    """HyperQueue cannot run here; the message says why."""


@dataclasses.dataclass
class HqServer:
    """A running server + worker, owned by the helper process ``pid``."""

    server_dir: Path
    pid: int
    cores: int
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        """A new ``hyperqueue.Client`` connected to this server."""
        from hyperqueue import Client

        return Client(str(self.server_dir))

    def job_status(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """``{job id: {"completed", "finished", "failed", "total"}}`` of the jobs it knows.

        One round trip: ``wait_for_jobs`` reports to its callback before it first sleeps.
        """
        got: dict[int, dict[str, Any]] = {}

        class _Got(Exception):
            pass

        def callback(status: dict[int, dict[str, Any]]) -> None:
            got.update(status)
            raise _Got

        with contextlib.suppress(_Got):
            self.client().connection.wait_for_jobs(job_ids, callback)
        return got

    def unfinished(self, job_ids: list[int]) -> list[int]:
        """The jobs among ``job_ids`` that the server knows and has not completed."""
        status = self.job_status(job_ids)
        return [jid for jid, info in status.items() if not info.get("completed")]

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.server_dir / LOG_FILE).read_text(errors="replace")
        return ""


def unavailable_reason() -> str | None:
    """Why no HyperQueue server can run here, or None."""
    if not sys.platform.startswith("linux"):
        return f"the hyperqueue wheel's local cluster needs Linux (this is {sys.platform})"
    try:
        import hyperqueue  # noqa: F401
    except ImportError as exc:
        return f"the hyperqueue package is not installed ({exc}); pip install hyperqueue"
    return None


def start_server(directory: Path, cores: int = 2) -> HqServer:
    """Start the helper process with a server in ``directory``; return once it is ready."""
    reason = unavailable_reason()
    if reason:
        raise HqUnavailable(reason)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / READY_FILE
    ready.unlink(missing_ok=True)
    # TMPDIR: the cluster's local-connection sockets (hq-lc-*) stay in the server directory.
    env = {**os.environ, "RUST_BACKTRACE": "0", "TMPDIR": str(directory)}
    helper = [sys.executable, "-m", "qflow.testing.hq_server", str(directory)]
    with open(directory / LOG_FILE, "wb") as log:
        process = subprocess.Popen(
            [*helper, "--cores", str(cores)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = HqServer(server_dir=directory, pid=process.pid, cores=cores, process=process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            raise HqUnavailable(
                f"the HyperQueue helper exited with status {process.returncode}: "
                f"{server.log.strip()[-2000:]}"
            )
        if time.monotonic() > deadline:
            stop_server(server)
            raise HqUnavailable(
                f"the HyperQueue server was not ready within {START_TIMEOUT_S:.0f} s: "
                f"{server.log.strip()[-2000:]}"
            )
        time.sleep(0.02)
    return server


def stop_server(server: HqServer) -> int | None:
    """SIGTERM the helper (it stops the cluster), SIGKILL it after STOP_TIMEOUT_S.

    Returns the helper's exit status (0 after a clean stop). Idempotent.
    """
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


# -- the helper process -----------------------------------------------------------------------


def _serve(directory: Path, cores: int) -> int:
    from hyperqueue import Client, Job, LocalCluster
    from hyperqueue.cluster import WorkerConfig

    stop: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)

    # Installed before the cluster starts: once it runs, default SIGTERM/SIGINT are ignored.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    parent = os.getppid()
    cluster = LocalCluster(server_dir=str(directory))
    try:
        cluster.start_worker(WorkerConfig(cores=cores))
        client = Client(str(directory))
        probe = Job(name="qflow-test-probe")
        probe.program(["true"], stdout=None, stderr=None)
        probe_id = client.submit(probe).id
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            status: dict[int, dict[str, Any]] = {}

            class _Got(Exception):
                pass

            def callback(s: dict[int, dict[str, Any]], status: dict = status) -> None:
                status.update(s)
                raise _Got

            with contextlib.suppress(_Got):
                client.connection.wait_for_jobs([probe_id], callback)
            info = status.get(probe_id, {})
            if info.get("completed"):
                if info.get("failed"):
                    print("probe task failed", flush=True)
                    return 3
                break
            if time.monotonic() > deadline or stop:
                print("the worker did not run the probe task", flush=True)
                return 3
            time.sleep(0.01)
        client.forget(probe_id)
        ready = directory / READY_FILE
        tmp = directory / (READY_FILE + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "server_dir": str(directory)}))
        os.replace(tmp, ready)
        print(f"ready: pid {os.getpid()}, server_dir {directory}, {cores} cores", flush=True)
        while not stop and os.getppid() == parent:
            time.sleep(0.05)
        print(f"stopping ({'signal ' + str(stop[0]) if stop else 'parent gone'})", flush=True)
        return 0
    finally:
        cluster.stop()
        print("stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    return _serve(args.directory.resolve(), args.cores)


if __name__ == "__main__":
    sys.exit(main())
