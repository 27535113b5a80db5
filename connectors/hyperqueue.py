"""The ``hyperqueue`` connector: every step execution is one HyperQueue job with one task.

qflow is a *client* of a running HyperQueue server (``server_dir``): it submits with the
``hyperqueue`` Python package (``Client(server_dir).submit(job)``) and never starts servers or
workers itself.

The task does not run the step's command directly but a small Python wrapper (run with
``python -I -S``, standard library only) that reads the step from a ``spec.json`` in a per-job
control directory under ``workdir``, then:

1. writes ``pid`` (host and wrapper pid), then checks for a ``cancel`` file (a step cancelled
   while its task was still queued removes its control directory and exits here, without
   running anything);
2. starts the command in its own process group with the step's environment (plus HyperQueue's
   ``HQ_*`` allocation variables but ``HQ_ACCESS_KEY``; nothing else of the worker's
   environment), working directory and redirections, and writes ``started`` (time and
   process group id);
3. waits for the command, every ``poll_interval`` checking for a ``cancel`` file and the time
   limit; either ends the process group (SIGTERM, 2 s grace, SIGKILL) as the local connector
   does;
4. writes ``exit`` (exit status exactly as ``subprocess`` reports it, negative for a signal,
   start and end time, why it was ended) and exits with the command's status, so HyperQueue
   shows failed steps as failed tasks.

HyperQueue signals only a task's main process (measured: SIGINT when its server stops), not
its process group. The wrapper turns SIGINT/SIGTERM/SIGHUP into ending the command's group;
a forked guardian process, in a session of its own, ends the group if the wrapper itself is
killed outright (SIGKILL), so a lost task never leaves the command behind.

Completion: the connector polls the control directory every ``poll_interval`` (a ``stat``):
``started`` fires ``on_started``, ``exit`` ends the wait, so a finished task is noticed within
about ``poll_interval`` (HyperQueue's own ``wait_for_jobs`` polls once per second and holds
the GIL while it waits, blocking every other thread of qflow: it is never used). Every
:data:`HQ_CHECK_INTERVAL_S` the job's state is also asked of the server (a status query that
costs well under a millisecond) to notice tasks that ended without the wrapper writing
``exit`` (wrapper not startable, control directory not visible on the worker, task killed).

Cancellation: the Python API of HyperQueue 0.27 has no cancel (only submit, wait, forget and
stop-server; the server's own client protocol is not exposed to Python), so cancelling is
cooperative: the connector creates ``cancel`` and waits until the wrapper reports the command
ended; if it does not within :data:`CANCEL_WAIT_S` and the task runs on this host, the
connector kills the process group itself. A task still queued in HyperQueue stays queued until
a worker takes it, then exits at once without running the command.

Crashes: each job's control directory is journalled (kind ``hq-job``, handle ``{"control":
path}``) before the job is submitted, its job id once known, and marked ended once the
command can no longer run. After a ``kill -9`` of qflow the task keeps running (it is
HyperQueue's, not qflow's child); ``cancel_orphan`` of that record cancels it the same
cooperative way, without needing its job id.

All HyperQueue client calls (blocking, GIL-holding FFI calls) run on one dedicated thread per
connector, which owns the client connection.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, field_validator

from qflow.connector import (
    Connector,
    EnvironmentVariables,
    JobOutcome,
    JobSpec,
    JobStartedCallback,
    LocationConfig,
)
from qflow.connectors.local import kill_process_group
from qflow.rundir.journal import Resource

_logger = logging.getLogger("qflow.connectors.hyperqueue")

KILL_GRACE_S = 2.0
"""Time a process group gets between SIGTERM and SIGKILL (as the local connector)."""
CANCEL_WAIT_S = KILL_GRACE_S + 5.0
"""Longest wait, after asking the wrapper to cancel, for it to report the command ended."""
HQ_CHECK_INTERVAL_S = 0.5
"""Seconds between two status queries to the server for one in-flight job."""
EXIT_FILE_WAIT_S = 1.0
"""How long the exit file is waited for once the server says the task ended."""
SERVER_LOST_S = 30.0
"""A job whose server has not answered status queries for this long counts as lost."""
CLIENT_CALL_TIMEOUT_S = 60.0
"""Longest wait for one HyperQueue client call (submit, status, forget)."""

_T = TypeVar("_T")

# The task wrapper, run by the HyperQueue worker as ``python -I -S -c WRAPPER CONTROL_DIR``.
# Standard library only, no site-packages: it must start fast and anywhere.
WRAPPER = r"""
import json, os, signal, socket, subprocess, sys, time
d = sys.argv[1]
def put(name, data):
    tmp = os.path.join(d, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(d, name))
with open(os.path.join(d, "spec.json")) as f:
    spec = json.load(f)
host = socket.gethostname()
stop = []
def on_signal(signum, frame):
    stop.append(signum)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
put("pid", {"host": host, "pid": os.getpid()})
cancel_file = os.path.join(d, "cancel")
if os.path.exists(cancel_file) or stop:
    import shutil
    shutil.rmtree(d, ignore_errors=True)  # nobody waits for it any more
    sys.exit(1)
env = {k: v for k, v in os.environ.items() if k.startswith("HQ_") and k != "HQ_ACCESS_KEY"}
env.update(spec["env"])
files = []
def out(path):
    f = open(path or spec["capture"], "wb" if path else "ab")
    files.append(f)
    return f
try:
    stdin = subprocess.DEVNULL
    if spec["stdin"]:
        stdin = open(spec["stdin"], "rb")
        files.append(stdin)
    stdout = out(spec["stdout"])
    stderr = out(spec["stderr"])
    r, w = os.pipe()
    child = subprocess.Popen(spec["command"], stdin=stdin, stdout=stdout, stderr=stderr,
                             env=env, cwd=spec["cwd"], close_fds=True, start_new_session=True)
except OSError as exc:
    code = 127 if isinstance(exc, FileNotFoundError) else 126
    put("exit", {"exit_code": code, "reason": None, "started": None, "ended": time.time(),
                 "host": host, "error": f"{type(exc).__name__}: {exc}"})
    sys.exit(code)
started = time.time()
for f in files:
    f.close()
def killpg(sig):
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
guardian = os.fork()
if guardian == 0:
    # Kills the command's group if the wrapper dies without saying goodbye.
    try:
        os.close(w)
        os.setsid()
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            try:
                data = os.read(r, 1)
                break
            except InterruptedError:
                continue
        if not data:
            killpg(signal.SIGTERM)
            end = time.monotonic() + spec["grace"]
            while time.monotonic() < end:
                try:
                    os.killpg(child.pid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            killpg(signal.SIGKILL)
    finally:
        os._exit(0)
os.close(r)
put("started", {"time": started, "pgid": child.pid, "host": host})
limit = spec["time_limit"]
deadline = started + limit if limit else None
reason = None
kill_at = None
while True:
    try:
        rc = child.wait(timeout=spec["poll"])
        break
    except subprocess.TimeoutExpired:
        pass
    if reason is None:
        if stop:
            reason = "signal"
        elif os.path.exists(cancel_file):
            reason = "cancelled"
        elif deadline is not None and time.time() >= deadline:
            reason = "timeout"
        if reason is not None:
            killpg(signal.SIGTERM)
            kill_at = time.monotonic() + spec["grace"]
    elif time.monotonic() >= kill_at:
        killpg(signal.SIGKILL)
ended = time.time()
if reason is not None:
    killpg(signal.SIGKILL)
put("exit", {"exit_code": rc, "reason": reason, "started": started, "ended": ended,
             "host": host, "error": None, "signal": stop[0] if stop else None})
os.write(w, b"x")
os.close(w)
os.waitpid(guardian, 0)
sys.exit(rc if 0 <= rc < 256 else (128 - rc if rc < 0 else 1))
"""


class HyperQueueError(RuntimeError):
    """The HyperQueue server refused or failed a request (not reachable, submit refused)."""


def _hq_message(exc: BaseException) -> str:
    """A HyperQueue FFI error without the Rust backtrace it carries under RUST_BACKTRACE."""
    text = str(exc).split("Stack backtrace:")[0].strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or repr(exc)


class _StatusReceived(Exception):  # noqa: N818 - control flow, not an error
    """Raised from the progress callback to end ``wait_for_jobs`` after its first report."""


class HyperQueueConnector(Connector):
    """Runs each step execution as a one-task HyperQueue job on a running server."""

    class Config(LocationConfig):
        """Keys of a ``connector: hyperqueue`` location."""

        server_dir: str = Field(
            description="Server directory of a running HyperQueue server (`hq server start "
            "--server-dir`, default `~/.hq-server`; a `LocalCluster`'s `server_dir`). qflow "
            "connects to it as a client; it never starts a server or workers.",
        )
        cpus: int = Field(
            default=1,
            ge=1,
            description="CPUs each step's task asks HyperQueue for; a step's "
            "`ResourceRequirement` cores (rounded up) win when larger. A task asking for more "
            "CPUs than any worker has stays queued.",
        )
        time_limit: int | None = Field(
            default=None,
            ge=1,
            description="Default time limit of a step, in seconds; a step's `ToolTimeLimit` "
            "wins. The task wrapper ends the command's process group when it is exceeded "
            "(SIGTERM, SIGKILL 2 s later). Unset: no limit.",
        )
        poll_interval: float = Field(
            default=0.05,
            gt=0,
            le=10,
            description="Seconds between two checks of a job's control files (a `stat` each, "
            "by qflow and by the task wrapper). A finished task is noticed within about this "
            "time; cancellation and time limits act within about this time too.",
        )
        environment: EnvironmentVariables = Field(
            default_factory=dict,
            description="Variables added to every step's environment on this location (e.g. a "
            "PATH valid on the workers, `OMP_NUM_THREADS`); they override the step's own "
            "values of the same name.",
        )
        workdir: str | None = Field(
            default=None,
            description="Directory for the jobs' control files (specification, start and exit "
            "markers, captured output). qflow and the workers must both see it (a shared "
            "filesystem when workers run on other hosts). Unset: a fresh directory under this "
            "host's temporary directory, removed when the run ends (fine when the workers run "
            "on this host).",
        )
        python: str | None = Field(
            default=None,
            description="Python interpreter (3.8 or later, standard library only) that runs "
            "the task wrapper on the workers. Unset: the interpreter running qflow.",
        )

        @field_validator("server_dir", "workdir", "python")
        @classmethod
        def _check_path(cls, value: str | None) -> str | None:
            if value is not None and not value.strip():
                raise ValueError("must not be empty")
            return os.path.expanduser(value) if value is not None else None

    def __init__(self, location: str, config: LocationConfig) -> None:
        super().__init__(location, config)
        self.cfg: HyperQueueConnector.Config = (
            config
            if isinstance(config, HyperQueueConnector.Config)
            else HyperQueueConnector.Config.model_validate(config.model_dump())
        )
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._client: Any = None
        self._workdir: Path | None = None
        self._own_workdir = False
        self._leftovers: dict[int, Path] = {}
        """Jobs whose control directory and server record await the task's end in HQ."""
        self._watched: set[int] = set()
        """Jobs whose ``run()`` still reads their control directory: never reaped."""

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to the server (fails clearly when it does not run) and make the workdir."""
        self._prepare_workdir()
        await self._call(self._connect)

    async def stop(self) -> None:
        """Forget finished jobs, remove the own work directory, close the client thread."""
        deadline = time.monotonic() + 2.0
        while self._executor is not None and time.monotonic() < deadline:
            await self._reap()
            # tasks that wrote their exit status end in HyperQueue within milliseconds;
            # tasks cancelled while queued end only when a worker takes them: not waited for
            if not any((c / "exit").exists() for c in self._leftovers.values()):
                break
            await asyncio.sleep(0.05)
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._own_workdir = False
        self._leftovers.clear()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            self._client = None
            executor.shutdown(wait=False)

    async def cancel_orphan(self, resource: Resource) -> None:
        """End the HyperQueue job of a crashed run through its control directory, journalled
        (kind ``hq-job``) before the job was submitted, so its job id is not needed.

        An ``execution`` holds nothing else here: its job is that ``hq-job`` record. Raises
        :class:`HyperQueueError` if the job's end cannot be confirmed.
        """
        if resource.kind == "execution":
            return
        if resource.kind != "hq-job" or not resource.handle.get("control"):
            raise HyperQueueError(
                f"{resource.describe()}: a hyperqueue location cannot end a {resource.kind!r} "
                "resource (only its hq-job records); end it with the connector that made it"
            )
        control = Path(resource.handle["control"])
        external = resource.external_id or ""
        job_id = int(external) if external.isdigit() else None
        if not await self._cancel(control, job_id):
            raise HyperQueueError(
                f"{resource.describe()}: its task did not confirm its end within "
                f"{CANCEL_WAIT_S:.0f} s and runs on another host; check `hq job list` there "
                "and cancel it by hand (`hq job cancel`)"
            )
        if (control / "exit").exists() and (control / "spec.json").exists():
            shutil.rmtree(control, ignore_errors=True)  # the wrapper is done with it

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            if self.cfg.workdir:
                self._workdir = Path(self.cfg.workdir)
                self._workdir.mkdir(parents=True, exist_ok=True)
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix=f"qflow-hq-{self.location}-"))
                self._own_workdir = True
        return self._workdir

    # -- the HyperQueue client, on its own thread ---------------------------------------
    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"qflow-hq-{self.location}"
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        return await asyncio.wait_for(future, CLIENT_CALL_TIMEOUT_S)

    def _connect(self) -> Any:
        """(client thread) The client connection, opened on first use."""
        if self._client is None:
            try:
                from hyperqueue import Client
            except ImportError as exc:
                raise HyperQueueError(
                    f"location {self.location}: the hyperqueue package is not installed ({exc}); "
                    "pip install 'qflow[hyperqueue]'"
                ) from None

            if not os.path.isdir(self.cfg.server_dir):
                raise HyperQueueError(
                    f"location {self.location}: server_dir {self.cfg.server_dir} does not exist "
                    "(start the server with `hq server start --server-dir ...` or a LocalCluster)"
                )
            try:
                self._client = Client(str(self.cfg.server_dir))
            except Exception as exc:
                raise HyperQueueError(
                    f"location {self.location}: cannot connect to the HyperQueue server of "
                    f"{self.cfg.server_dir}: {_hq_message(exc)}"
                ) from None
        return self._client

    def _submit(self, job: Any) -> int:
        """(client thread) Submit, reconnecting once if the connection broke."""
        try:
            return int(self._connect().submit(job).id)
        except HyperQueueError:
            raise
        except Exception:
            self._client = None
        try:
            return int(self._connect().submit(job).id)
        except HyperQueueError:
            raise
        except Exception as exc:
            self._client = None
            raise HyperQueueError(
                f"location {self.location}: HyperQueue refused the job: {_hq_message(exc)}"
            ) from None

    def _status(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """(client thread) Task counts per job, from one server round trip.

        ``wait_for_jobs`` reports the jobs' state to its progress callback before it first
        sleeps; raising from the callback ends it there, which makes a cheap status query.
        Jobs the server does not know are missing from the result.
        """
        client = self._connect()
        got: dict[int, dict[str, Any]] = {}

        def callback(status: dict[int, dict[str, Any]]) -> None:
            got.update(status)
            raise _StatusReceived

        try:
            client.connection.wait_for_jobs(job_ids, callback)
        except _StatusReceived:
            pass
        except Exception:
            self._client = None
            raise
        return got

    def _forget(self, job_ids: list[int]) -> None:
        """(client thread) Drop finished jobs from the server's memory."""
        client = self._connect()
        for job_id in job_ids:
            with contextlib.suppress(Exception):
                client.connection.forget_job(job_id)

    async def _reap(self) -> None:
        """Forget and clean up the jobs whose task HyperQueue reports ended."""
        if not self._leftovers:
            return
        try:
            status = await self._call(self._status, list(self._leftovers))
        except Exception as exc:  # noqa: BLE001 - best effort
            _logger.debug("status query for cleanup failed: %s", exc)
            return
        done = [
            jid
            for jid in self._leftovers
            if jid not in self._watched and status.get(jid, {}).get("completed")
        ]
        if not done:
            return
        with contextlib.suppress(Exception):
            await self._call(self._forget, done)
        for jid in done:
            control = self._leftovers.pop(jid, None)  # another run may have reaped it
            if control is not None:
                shutil.rmtree(control, ignore_errors=True)

    # -- one step execution ---------------------------------------------------------------
    def _time_limit(self, job: JobSpec) -> int | None:
        return job.resources.time_limit_s or self.cfg.time_limit

    def _build_job(self, job: JobSpec, control: Path) -> Any:
        from hyperqueue import Job
        from hyperqueue.ffi.protocol import ResourceRequest

        cpus = max(self.cfg.cpus, math.ceil(job.resources.cores or 0))
        hq_job = Job(name=job.name, max_fails=1)
        hq_job.program(
            [self.cfg.python or sys.executable, "-I", "-S", "-c", WRAPPER, str(control)],
            cwd=str(control),
            env={},
            stdout=None,
            stderr=str(control / "wrapper.err"),
            name=job.name,
            resources=ResourceRequest(cpus=cpus),
            crash_limit=1,
        )
        return hq_job

    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        workdir = self._prepare_workdir()
        control = workdir / f"{job.name}-{uuid.uuid4().hex[:12]}"
        # journalled before the job can exist: a crashed run's clean-up cancels it through its
        # control directory even if the crash came before HyperQueue gave it an id
        resource = self.journal.intend(
            "hq-job", self.location, {"control": str(control)}, step=job.step,
            iteration=job.iteration,
        )  # fmt: skip
        control.mkdir(parents=True)
        capture = control / "capture"
        spec = {
            "command": list(job.command),
            "cwd": job.cwd,
            "env": {**job.env, **self.cfg.environment},
            "stdin": job.stdin_path,
            "stdout": job.stdout_path,
            "stderr": job.stderr_path,
            "capture": str(capture),
            "time_limit": self._time_limit(job),
            "poll": self.cfg.poll_interval,
            "grace": KILL_GRACE_S,
        }
        (control / "spec.json").write_text(json.dumps(spec))
        submit = asyncio.ensure_future(self._call(self._submit, self._build_job(job, control)))
        try:
            job_id = await asyncio.shield(submit)
        except asyncio.CancelledError:
            # Cancelled while submitting: the job may exist nonetheless; cancel it as usual.
            with contextlib.suppress(OSError):
                (control / "cancel").touch()
            try:
                job_id = await submit
            except Exception:  # noqa: BLE001 - not submitted: nothing to cancel
                shutil.rmtree(control, ignore_errors=True)
                self.journal.ended(resource)
                raise asyncio.CancelledError from None
            self._leftovers[job_id] = control
            resource = self.journal.exists(resource, str(job_id))
            if await self._cancel(control, job_id):
                self.journal.ended(resource)
            raise
        except BaseException:
            shutil.rmtree(control, ignore_errors=True)  # without spec.json no command can run
            self.journal.ended(resource)
            raise
        resource = self.journal.exists(resource, str(job_id))
        self._leftovers[job_id] = control
        forwarder = _Forwarder(
            capture if job.stdout_path is None or job.stderr_path is None else None
        )
        self._watched.add(job_id)  # another step's _reap must not remove its exit file
        try:
            record = await self._wait(job_id, control, on_started, forwarder)
        except asyncio.CancelledError:
            if await self._cancel(control, job_id):
                self.journal.ended(resource)
            forwarder.pump(final=True)
            raise
        finally:
            self._watched.discard(job_id)
        if record.get("gone", True):  # else the server went silent: the task may still run
            self.journal.ended(resource)
        forwarder.pump(final=True)
        outcome = self._outcome(job, job_id, record)
        await self._reap()
        return outcome

    async def _wait(
        self,
        job_id: int,
        control: Path,
        on_started: JobStartedCallback,
        forwarder: _Forwarder,
    ) -> dict[str, Any]:
        """Poll the control files until ``exit`` appears (or the task is gone without it)."""
        exit_file = control / "exit"
        started_file = control / "started"
        reported = False
        next_check = time.monotonic() + HQ_CHECK_INTERVAL_S
        gone_since: float | None = None
        failing_since: float | None = None
        while True:
            if not reported and started_file.exists():
                reported = True
                _notify(on_started, str(job_id))
            record = _read_json(exit_file)
            if record is not None:
                if not reported and record.get("started") is not None:
                    _notify(on_started, str(job_id))
                return record
            forwarder.pump()
            now = time.monotonic()
            if gone_since is not None and now - gone_since >= EXIT_FILE_WAIT_S:
                return await self._lost(job_id, control)
            if gone_since is None and now >= next_check:
                next_check = now + HQ_CHECK_INTERVAL_S
                try:
                    status = await self._call(self._status, [job_id])
                except Exception as exc:  # noqa: BLE001 - the exit file still works
                    failing_since = failing_since if failing_since is not None else now
                    _logger.warning(
                        "location %s: status of HyperQueue job %s: %s",
                        self.location,
                        job_id,
                        _hq_message(exc),
                    )
                    if now - failing_since >= SERVER_LOST_S:
                        return await self._lost(
                            job_id,
                            control,
                            f"the server has not answered for {now - failing_since:.0f} s "
                            f"({_hq_message(exc)})",
                        )
                else:
                    failing_since = None
                    info = status.get(job_id)
                    if info is None or info.get("completed"):
                        gone_since = time.monotonic()
            await asyncio.sleep(self.cfg.poll_interval)

    async def _lost(self, job_id: int, control: Path, reason: str | None = None) -> dict[str, Any]:
        """The task ended in HyperQueue without the wrapper writing its exit status (``reason``
        None), or the server stopped answering (``gone`` False: it may still run)."""
        gone = reason is None
        if reason is None:
            reason = "the server no longer knows the job"
            with contextlib.suppress(Exception):
                failed = await self._call(self._failed_reason, job_id)
                if failed:
                    reason = failed
        log = ""
        with contextlib.suppress(OSError):
            text = (control / "wrapper.err").read_text(errors="replace").strip()
            if text:
                log = "; wrapper stderr: " + " | ".join(text[-600:].splitlines())
        started = _read_json(control / "started")
        return {
            "gone": gone,
            "exit_code": None,
            "reason": "lost",
            "started": started.get("time") if started else None,
            "ended": time.time(),
            "host": started.get("host") if started else None,
            "error": f"HyperQueue task ended without an exit status: {reason}{log}",
        }

    def _failed_reason(self, job_id: int) -> str | None:
        """(client thread) HyperQueue's error text for the job's failed task, if any."""
        failed = self._connect().connection.get_failed_tasks([job_id]).get(job_id, {})
        for ctx in failed.values():
            return _hq_message(ctx.error)
        return None

    async def _cancel(self, control: Path, job_id: int | None) -> bool:
        """Ask the wrapper to end the command (``cancel``); kill the task ourselves if it does
        not confirm in time and runs on this host.

        True once the command cannot run any more: it ended, it never started (a queued task
        exits without running it when a worker takes it), or its task is gone (the wrapper's
        guardian ends what it left). False if that could not be confirmed (logged).
        """
        with contextlib.suppress(OSError):
            (control / "cancel").touch()
        name = job_id if job_id is not None else control.name
        if not (control / "pid").exists():
            # Still queued (the wrapper checks ``cancel`` after writing ``pid``): when a worker
            # takes the task, it exits without running the command.
            _logger.info(
                "location %s: HyperQueue job %s cancelled while queued", self.location, name
            )
            return True
        task_gone = await self._wait_for_wrapper(control, job_id)
        if (control / "exit").exists() or not control.exists():
            return True  # ended, or cancelled before it started (the wrapper removed it)
        if kill_task_here(control) or task_gone:
            return True  # killed here, or the wrapper's guardian ends what it left
        host = (_read_json(control / "pid") or {}).get("host", "an unknown host")
        _logger.warning(
            "location %s: HyperQueue job %s did not confirm its cancellation within %.0f s "
            "(task on %s, not killable from here)", self.location, name, CANCEL_WAIT_S, host,
        )  # fmt: skip
        return False

    async def _wait_for_wrapper(self, control: Path, job_id: int | None) -> bool:
        """Wait (up to ``CANCEL_WAIT_S``) for the wrapper to write ``exit`` or remove its
        directory; True if HyperQueue reports the task ended first (the wrapper died)."""
        deadline = time.monotonic() + CANCEL_WAIT_S
        next_check = time.monotonic() + HQ_CHECK_INTERVAL_S
        while time.monotonic() < deadline:
            if (control / "exit").exists() or not control.exists():
                return False
            if job_id is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + HQ_CHECK_INTERVAL_S
                with contextlib.suppress(Exception):
                    info = (await self._call(self._status, [job_id])).get(job_id)
                    if info is None or info.get("completed"):
                        return True
            await asyncio.sleep(self.cfg.poll_interval)
        return False

    def _outcome(self, job: JobSpec, job_id: int, record: dict[str, Any]) -> JobOutcome:
        started = record.get("started")
        ended = record.get("ended") if started is not None else None
        host = record.get("host")
        where = f" on {host}" if host else ""
        reason = record.get("reason")
        code = record.get("exit_code")
        message: str | None = None
        if record.get("error"):
            code = code if code is not None else 1
            if reason == "lost":
                message = f"HyperQueue job {job_id}{where}: {record['error']}"
            else:
                message = (
                    f"cannot run {job.command[0] if job.command else '(empty command)'!r}"
                    f"{where} (HyperQueue job {job_id}): {record['error']}"
                )
        elif reason == "timeout":
            limit = self._time_limit(job)
            message = f"exceeded its time limit of {limit} s and was terminated"
        elif reason == "cancelled":
            code = code if code is not None else -15
            message = f"HyperQueue job {job_id} was cancelled"
        elif reason == "signal":
            sig = record.get("signal")
            with contextlib.suppress(ValueError, TypeError):
                sig = signal.Signals(sig).name
            message = (
                f"HyperQueue job {job_id}{where} was ended by HyperQueue ({sig} to its task, e.g. "
                "its worker or server stopped)"
            )
        if code is None:
            code = 1
        nodes = self.config.nodes
        node_seconds = (
            nodes * max(0.0, ended - started) if started is not None and ended is not None else 0.0
        )
        return JobOutcome(
            exit_code=int(code),
            message=message,
            started=started,
            ended=ended,
            nodes=nodes,
            node_seconds=node_seconds,
            external_id=str(job_id),
        )


class _Forwarder:
    """Copies captured output (steps without stdout/stderr files) to qflow's stderr."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def pump(self, final: bool = False) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            data = b""
        self.offset += len(data)
        text = self.decoder.decode(data, final=final)
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()


def kill_task_here(control: Path) -> bool:
    """SIGKILL a task's command group, wrapper and guardian if the task runs on this host;
    False if it runs elsewhere.

    The group (from ``started``) is killed only while the wrapper or its guardian still runs:
    they are found by their command line (which ends with the control directory), so a
    process group id reused since a crash is never hit.
    """
    pid = _read_json(control / "pid") or {}
    if pid.get("host") != socket.gethostname():
        return False
    watchers = _wrapper_processes(control)
    started = _read_json(control / "started") or {}
    if watchers and "pgid" in started:
        kill_process_group(int(started["pgid"]), signal.SIGKILL)
    for watcher in watchers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(watcher, signal.SIGKILL)
    return True


def _wrapper_processes(control: Path) -> list[int]:
    """Pids on this host of the task wrapper of ``control`` and of its forked guardian."""
    tail = b"\0" + os.fsencode(control) + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
            if cmdline.read().endswith(tail):
                found.append(int(entry.name))
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _notify(on_started: JobStartedCallback, external_id: str) -> None:
    try:
        on_started(external_id)
    except Exception:  # noqa: BLE001 - a callback bug must not lose the job
        _logger.exception("on_started callback of HyperQueue job %s failed", external_id)
