"""The asynchronous cwltool executor (the arvados-cwl-runner pattern).

cwltool's job generator is driven with ``workflow_eval_lock`` held. A runnable job is
started and the loop moves on at once: :class:`~qflow.engine.job.ConnectorJob` submits to
the dispatcher, in-engine jobs (ExpressionTool, workflow bookkeeping, cache hits) run inline.
A ``None`` from the generator means "nothing runnable until something finishes": the
executor waits on the lock's condition, which the dispatcher notifies after each completion.
"""

from __future__ import annotations

import logging
from typing import Any

from cwltool.context import RuntimeContext
from cwltool.errors import WorkflowException
from cwltool.executors import JobExecutor
from cwltool.process import Process

from qflow.engine.dispatcher import Dispatcher
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

    def run_jobs(
        self,
        process: Process,
        job_order_object: Any,
        logger: logging.Logger,
        runtime_context: RuntimeContext,
    ) -> None:
        problems = self.dispatcher.deployment.check_steps(step_paths(process))
        if problems:
            self.bad_input = problems
            raise BadInputError("\n".join(problems))
        self.started_running = True
        lock = runtime_context.workflow_eval_lock
        assert lock is not None
        self.dispatcher.eval_lock = lock
        runtime_context.qflow_dispatcher = self.dispatcher  # type: ignore[attr-defined]

        jobs = process.job(job_order_object, self.output_callback, runtime_context)
        with lock:
            for job in jobs:
                if job is None:
                    if self.dispatcher.in_flight == 0:
                        logger.error("Workflow cannot make any more progress.")
                        break
                    lock.wait()
                    continue
                if runtime_context.builder is not None and hasattr(job, "builder"):
                    job.builder = runtime_context.builder
                if job.outdir is not None:
                    self.output_dirs.add(job.outdir)
                job.run(runtime_context)
            while self.dispatcher.in_flight:
                lock.wait()
        if self.dispatcher.errors:
            raise WorkflowException("; ".join(self.dispatcher.errors))
