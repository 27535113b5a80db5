"""The asynchronous cwltool executor (the arvados-cwl-runner pattern).

cwltool's job generator is driven with ``workflow_eval_lock`` held. A runnable job is
started and the loop moves on at once: :class:`~qflow.engine.job.ConnectorJob` submits to
the dispatcher, in-engine jobs (ExpressionTool, workflow bookkeeping, cache hits) run inline.
A ``None`` from the generator means "nothing runnable until something finishes": the
executor takes the next completion from the dispatcher and delivers it (collects outputs,
calls cwltool's callback) on this thread, which holds ``workflow_eval_lock`` throughout.
"""

from __future__ import annotations

import logging
from typing import Any

from cwltool.context import RuntimeContext
from cwltool.errors import WorkflowException
from cwltool.executors import JobExecutor
from cwltool.process import Process

from qflow.deployment import EMBEDDED_SOURCE
from qflow.engine.dispatcher import Completion, Dispatcher
from qflow.engine.tools import step_paths


class BadInputError(WorkflowException):
    """The workflow and the deployment do not fit (found before anything was submitted)."""


class QflowExecutor(JobExecutor):
    """Submits every CommandLineTool job to the dispatcher and waits only when it must."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.started_running = False
        """True once the workflow passed the binding check and jobs may be submitted."""
        self.bad_input: list[str] = []
        self.errors: list[str] = []

    def run_jobs(
        self,
        process: Process,
        job_order_object: Any,
        logger: logging.Logger,
        runtime_context: RuntimeContext,
    ) -> None:
        paths = step_paths(process)
        deployment = self.dispatcher.deployment
        if deployment.source != EMBEDDED_SOURCE:  # the default serves every workflow: no noise
            for warning in deployment.unused_bindings(paths):
                logging.getLogger("qflow").warning("%s", warning)
        problems = deployment.check_steps(paths)
        if problems:
            self.bad_input = problems
            raise BadInputError("\n".join(problems))
        self.started_running = True
        lock = runtime_context.workflow_eval_lock
        assert lock is not None
        runtime_context.qflow_dispatcher = self.dispatcher  # type: ignore[attr-defined]
        dispatcher = self.dispatcher

        jobs = process.job(job_order_object, self.output_callback, runtime_context)
        with lock:
            for job in jobs:
                if job is None:
                    if dispatcher.in_flight == 0:
                        logger.error("Workflow cannot make any more progress.")
                        break
                    self._deliver(dispatcher.next_completion())
                    while completion := dispatcher.next_completion(block=False):
                        self._deliver(completion)
                    continue
                if runtime_context.builder is not None and hasattr(job, "builder"):
                    job.builder = runtime_context.builder
                if job.outdir is not None:
                    self.output_dirs.add(job.outdir)
                job.run(runtime_context)
            while dispatcher.in_flight:
                self._deliver(dispatcher.next_completion())
        if self.errors:
            raise WorkflowException("; ".join(self.errors))

    def _deliver(self, completion: Completion | None) -> None:
        """Collect a finished job's outputs and hand them to cwltool."""
        assert completion is not None
        if completion.job is None:
            return  # a wake-up: a placement finished, the job generators will be polled again
        try:
            completion.job.finish(completion.outcome, completion.error)
        except Exception as exc:  # noqa: BLE001 - reported as a run error, the run goes on
            logging.getLogger("qflow").exception("delivering %s failed", completion.job.name)
            self.errors.append(f"{completion.job.name}: {exc}")
