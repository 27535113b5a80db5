"""A cwltool job whose command runs through a connector instead of ``subprocess``.

cwltool's ``CommandLineJob.run`` stages inputs and then calls ``_execute``, which blocks on
the process. Here ``_execute`` builds a :class:`~qflow.connector.JobSpec` from the same job
fields and hands it to the dispatcher, then returns at once: the executor keeps evaluating
the workflow. When the connector reports the end, :meth:`ConnectorJob.finish` does what the
second half of cwltool's ``_execute`` does (relink the working dir, collect outputs, call the
output callback under ``workflow_eval_lock``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, cast

from cwltool.context import RuntimeContext
from cwltool.errors import WorkflowException
from cwltool.job import CommandLineJob, JobBase, relink_initialworkdir
from cwltool.utils import bytes2str_in_dicts

from qflow.connector import JobOutcome, JobSpec, Resources
from qflow.engine.reuse import ReuseKey, job_key, link_outputs
from qflow.placement import Placement

if TYPE_CHECKING:
    import subprocess

_logger = logging.getLogger("cwltool")  # job messages as cwltool words them, same verbosity


def process_status(job: JobBase, exit_code: int) -> str:
    """Map an exit code to a CWL process status, honouring the tool's success/fail codes."""
    if exit_code in job.successCodes:
        return "success"
    if exit_code in job.temporaryFailCodes:
        return "temporaryFail"
    if exit_code in job.permanentFailCodes:
        return "permanentFail"
    return "success" if exit_code == 0 else "permanentFail"


class ConnectorJob(JobBase):
    """A cwltool job whose execution is asynchronous and goes to a connector.

    The part every qflow job shares, whatever cwltool job it is mixed into: the command
    as it is (:class:`CommandConnectorJob`) or in a software container
    (:mod:`qflow.engine.containers`).
    """

    step_path: str = "/"
    iteration: int | None = None
    _reuse_key: ReuseKey | None = None
    placement: Placement | None = None
    """Where it runs: decided before cwltool built the job (see qflow.placement)."""

    def _execute(
        self,
        runtime: list[str],
        env: MutableMapping[str, str],
        runtimeContext: RuntimeContext,
        monitor_function: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> None:
        dispatcher = runtimeContext.qflow_dispatcher  # type: ignore[attr-defined]
        self._runtime_context = runtimeContext
        assert self.placement is not None, "placed before cwltool built the job"
        try:
            spec = self._job_spec(runtime, env, runtimeContext)
        except WorkflowException as err:
            _logger.error("[job %s] Job error:\n%s", self.name, err)
            dispatcher.release_unused(self.placement)
            self._deliver({}, "permanentFail")
            return
        store = dispatcher.reuse
        if store is not None:
            self._reuse_key = job_key(self, spec)
            earlier = store.lookup(self._reuse_key)
            if earlier is not None:  # finished before the run was interrupted: reuse it
                link_outputs(earlier, self.outdir)
                dispatcher.ledger.reused(self.step_path, self.iteration)
                dispatcher.release_unused(self.placement)
                self.finish(JobOutcome(exit_code=0))
                return
            why = store.why_not(self.step_path, self.iteration, self._reuse_key)
            if why is not None:
                it = "" if self.iteration is None else f" #{self.iteration}"
                logging.getLogger("qflow").warning(
                    "%s%s runs again, not reused: %s", self.step_path, it, why
                )
        dispatcher.submit(self, spec)

    def _job_spec(
        self, runtime: list[str], env: MutableMapping[str, str], rc: RuntimeContext
    ) -> JobSpec:
        if self.mpi_procs:
            menv = rc.mpi_config
            mpi_prefix = [menv.runner, menv.nproc_flag, str(self.mpi_procs), *menv.extra_flags]
            runtime = mpi_prefix + runtime
            menv.pass_through_env_vars(env)
            menv.set_env_vars(env)
        stdin_path = None
        if self.stdin is not None:
            rmap = self.pathmapper.reversemap(self.stdin)
            if rmap is None:
                raise WorkflowException(f"{self.stdin} missing from pathmapper")
            stdin_path = rmap[1]
        self._stdout_path = self._log_path(self.stdout)
        self._stderr_path = self._log_path(self.stderr)
        commands = [str(x) for x in runtime + self.command_line]
        if not commands:
            raise WorkflowException(
                "Cannot run a CommandLineTool that produces an empty command line. "
                "Specify a 'baseCommand', 'arguments', and/or an input with an "
                "'inputBinding' so there is a program to execute."
            )
        if rc.secret_store is not None:
            commands = cast(list[str], rc.secret_store.retrieve(commands))  # type: ignore[arg-type]
            env = cast(MutableMapping[str, str], rc.secret_store.retrieve(env))  # type: ignore[arg-type]
        res = self.builder.resources
        return JobSpec(
            name=self.name,
            step=self.step_path,
            iteration=self.iteration,
            command=commands,
            cwd=self.outdir,
            env=self.command_environment(env),
            container_image=self.container_image,
            stdin_path=stdin_path,
            stdout_path=self._stdout_path,
            stderr_path=self._stderr_path,
            resources=Resources(
                cores=_number(res.get("cores")),
                ram_mib=_number(res.get("ram")),
                tmpdir_mib=_number(res.get("tmpdirSize")),
                outdir_mib=_number(res.get("outdirSize")),
                time_limit_s=self.timelimit or None,
                mpi_procs=self.mpi_procs,
            ),
        )

    def command_environment(self, env: MutableMapping[str, str]) -> dict[str, str]:
        """The environment the command runs with (here: the step's, as cwltool built it)."""
        return dict(env)

    container_image: str | None = None
    """The software-container image the command runs in (None: none)."""

    def _log_path(self, relative: str | None) -> str | None:
        if relative is None:
            return None
        path = os.path.join(self.base_path_logs, relative)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return path

    def status_for(self, exit_code: int) -> str:
        return process_status(self, exit_code)

    def finish(self, outcome: JobOutcome | None, error: str | None = None) -> str:
        """Collect outputs after the connector reported the end; returns the CWL status."""
        rc = self._runtime_context
        outputs: dict[str, Any] = {}
        if outcome is None:
            _logger.error("[job %s] could not run: %s", self.name, error)
            status = "permanentFail"
        elif self._falls_back(status := self.status_for(outcome.exit_code)):
            pass  # its classical implementation runs next; qflow says so, once
        else:
            if status != "success":
                why = f" ({outcome.message})" if outcome.message else ""
                _logger.warning(
                    "[job %s] exited with status: %d%s", self.name, outcome.exit_code, why
                )
            try:
                if "listing" in self.generatefiles and self.generatemapper:
                    relink_initialworkdir(
                        self.generatemapper,
                        self.outdir,
                        self.builder.outdir,
                        inplace_update=self.inplace_update,
                    )
                rc.log_dir_handler(
                    self.outdir, self.base_path_logs, self._stdout_path, self._stderr_path
                )
                collected = self.collect_outputs(self.outdir, outcome.exit_code)
                outputs = cast(dict[str, Any], bytes2str_in_dicts(collected))
            except WorkflowException as err:
                _logger.error("[job %s] Job error:\n%s", self.name, err)
                status = "permanentFail"
            except Exception as err:  # noqa: BLE001 - cwltool reports any collection error this way
                _logger.exception("Exception while collecting outputs of %s: %s", self.name, err)
                status = "permanentFail"
        self._forget_secret_files(rc)
        store = rc.qflow_dispatcher.reuse  # type: ignore[attr-defined]
        if status == "success" and store is not None and self._reuse_key:
            store.record(self._reuse_key, self.outdir, self.step_path, self.iteration)
        self._deliver(outputs, status)
        self._cleanup(rc)
        return status

    delivered_status: str | None = None
    """The CWL status handed to cwltool (None until then)."""

    def _falls_back(self, status: str) -> bool:
        """A failed quantum execution whose step has a classical candidate to fall back on:
        a handled failure, with no outputs to collect."""
        if status == "success" or self.placement is None or not self.placement.quantum:
            return False
        placer = self._runtime_context.qflow_dispatcher.placer  # type: ignore[attr-defined]
        return bool(placer.has_classical_candidate(self.step_path))

    def _deliver(self, outputs: dict[str, Any], status: str) -> None:
        self.delivered_status = status
        quiet = status != "success" and self._falls_back(status)
        log = _logger.info if status == "success" else _logger.debug if quiet else _logger.warning
        log("[job %s] completed %s", self.name, status)
        if self.output_callback:
            with self._runtime_context.workflow_eval_lock:  # type: ignore[union-attr]
                self.output_callback(outputs, status)

    def _forget_secret_files(self, rc: RuntimeContext) -> None:
        """Delete generated files that contain secrets (as cwltool does)."""
        if self.generatemapper is None or rc.secret_store is None:
            return
        for _, p in self.generatemapper.items():
            if p.type == "CreateFile" and rc.secret_store.has_secret(p.resolved):
                target = p.target
                prefix = self.builder.outdir + "/"
                if target.startswith(prefix):
                    target = os.path.join(self.outdir, target[len(prefix) :])
                os.remove(target)

    def _cleanup(self, rc: RuntimeContext) -> None:
        if rc.rm_tmpdir:
            scratch = [path for path in (self.stagedir, self.tmpdir) if path]
            rc.qflow_dispatcher.remove_later(*scratch)  # type: ignore[attr-defined]


class CommandConnectorJob(ConnectorJob, CommandLineJob):
    """A step's command as it is, through its location's connector."""


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
