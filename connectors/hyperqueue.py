"""The ``hyperqueue`` connector: every step execution is one HyperQueue job with one task.

qflow is a *client* of a running HyperQueue server (``server_dir``): it submits with the
``hyperqueue`` Python package (``Client(server_dir).submit(job)``) and never starts servers or
workers itself.

Each step's task runs a small wrapper on a control directory of its own under ``workdir``
(hyperqueue_task.py: the wrapper, its ``spec.json``, ``pid``/``started``/``exit`` files and
the ``cancel`` file it obeys); the HyperQueue client calls run on a thread of their own
(hyperqueue_client.py); the location's keys are hyperqueue_config.py's.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from qflow.connector import (
    STANDALONE,
    Connector,
    ConnectorContext,
    JobOutcome,
    JobSpec,
    JobStartedCallback,
)
from qflow.connectors.hyperqueue_client import HqClient, HyperQueueError, hq_message
from qflow.connectors.hyperqueue_config import HyperQueueConfig
from qflow.connectors.hyperqueue_task import (
    CAPTURE,
    KILL_GRACE_S,
    Forwarder,
    build_job,
    kill_task_here,
    read_json,
    task_outcome,
    write_spec,
)
from qflow.rundir.journal import Resource

__all__ = ["HyperQueueConfig", "HyperQueueConnector", "HyperQueueError"]

_logger = logging.getLogger("qflow.connectors.hyperqueue")

CANCEL_WAIT_S = KILL_GRACE_S + 5.0
"""Longest wait, after asking the wrapper to cancel, for it to report the command ended."""
HQ_CHECK_INTERVAL_S = 0.5
"""Seconds between two status queries to the server for one in-flight job."""
EXIT_FILE_WAIT_S = 1.0
"""How long the exit file is waited for once the server says the task ended."""
SERVER_LOST_S = 30.0
"""A job whose server has not answered status queries for this long counts as lost."""


class HyperQueueConnector(Connector[HyperQueueConfig]):
    """Runs each step execution as a one-task HyperQueue job on a running server."""

    Config = HyperQueueConfig

    def __init__(
        self, location: str, config: HyperQueueConfig, context: ConnectorContext = STANDALONE
    ) -> None:
        super().__init__(location, config, context)
        self._hq = HqClient(location, config.server_dir)
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
        await self._hq.connect()

    async def stop(self) -> None:
        """Forget finished jobs, remove the own work directory, close the client thread."""
        deadline = time.monotonic() + 2.0
        while self._hq.used and time.monotonic() < deadline:
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
        self._hq.close()

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
            if self.config.workdir:
                self._workdir = Path(self.config.workdir)
                self._workdir.mkdir(parents=True, exist_ok=True)
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix=f"qflow-hq-{self.location}-"))
                self._own_workdir = True
        return self._workdir

    async def _reap(self) -> None:
        """Forget and clean up the jobs whose task HyperQueue reports ended."""
        if not self._leftovers:
            return
        try:
            status = await self._hq.status(list(self._leftovers))
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
            await self._hq.forget(done)
        for jid in done:
            control = self._leftovers.pop(jid, None)  # another run may have reaped it
            if control is not None:
                shutil.rmtree(control, ignore_errors=True)

    # -- one step execution ---------------------------------------------------------------
    def _time_limit(self, job: JobSpec) -> int | None:
        return job.resources.time_limit_s or self.config.time_limit

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
        env = {**job.env, **self.config.environment}
        write_spec(control, job, env, self._time_limit(job), self.config.poll_interval)
        cpus = max(self.config.cpus, math.ceil(job.resources.cores or 0))
        hq_job = build_job(job, control, cpus, self.config.python or sys.executable)
        submit = asyncio.ensure_future(self._hq.submit(hq_job))
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
        has_files = job.stdout_path is not None and job.stderr_path is not None
        forwarder = Forwarder(None if has_files else control / CAPTURE)
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
        outcome = task_outcome(job, job_id, record, self._time_limit(job), self.config.nodes)
        await self._reap()
        return outcome

    async def _wait(
        self,
        job_id: int,
        control: Path,
        on_started: JobStartedCallback,
        forwarder: Forwarder,
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
            record = read_json(exit_file)
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
                    status = await self._hq.status([job_id])
                except Exception as exc:  # noqa: BLE001 - the exit file still works
                    failing_since = failing_since if failing_since is not None else now
                    _logger.warning(
                        "location %s: status of HyperQueue job %s: %s",
                        self.location,
                        job_id,
                        hq_message(exc),
                    )
                    if now - failing_since >= SERVER_LOST_S:
                        return await self._lost(
                            job_id,
                            control,
                            f"the server has not answered for {now - failing_since:.0f} s "
                            f"({hq_message(exc)})",
                        )
                else:
                    failing_since = None
                    info = status.get(job_id)
                    if info is None or info.get("completed"):
                        gone_since = time.monotonic()
            await asyncio.sleep(self.config.poll_interval)

    async def _lost(self, job_id: int, control: Path, reason: str | None = None) -> dict[str, Any]:
        """The task ended in HyperQueue without the wrapper writing its exit status (``reason``
        None), or the server stopped answering (``gone`` False: it may still run)."""
        gone = reason is None
        if reason is None:
            reason = "the server no longer knows the job"
            with contextlib.suppress(Exception):
                failed = await self._hq.failed_reason(job_id)
                if failed:
                    reason = failed
        log = ""
        with contextlib.suppress(OSError):
            text = (control / "wrapper.err").read_text(errors="replace").strip()
            if text:
                log = "; wrapper stderr: " + " | ".join(text[-600:].splitlines())
        started = read_json(control / "started")
        return {
            "gone": gone,
            "exit_code": None,
            "reason": "lost",
            "started": started.get("time") if started else None,
            "ended": time.time(),
            "host": started.get("host") if started else None,
            "error": f"HyperQueue task ended without an exit status: {reason}{log}",
        }

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
        host = (read_json(control / "pid") or {}).get("host", "an unknown host")
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
                    info = (await self._hq.status([job_id])).get(job_id)
                    if info is None or info.get("completed"):
                        return True
            await asyncio.sleep(self.config.poll_interval)
        return False


def _notify(on_started: JobStartedCallback, external_id: str) -> None:
    try:
        on_started(external_id)
    except Exception:  # noqa: BLE001 - a callback bug must not lose the job
        _logger.exception("on_started callback of HyperQueue job %s failed", external_id)
