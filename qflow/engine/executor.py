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
from collections.abc import Callable, Mapping
from typing import Any

from cwltool.context import RuntimeContext
from cwltool.errors import WorkflowException
from cwltool.executors import JobExecutor
from cwltool.process import Process

from qflow.engine.dispatcher import Completion, Dispatcher
from qflow.engine.images import container_problems
from qflow.engine.inputs import job_order_problems
from qflow.engine.tools import step_paths

_cwltool_logger = logging.getLogger("cwltool")


def plain_data(value: Any) -> Any:
    """``value`` with ruamel.yaml's commented maps and lists made plain dicts and lists.

    cwltool deep-copies the job order for every job it builds; a ruamel ``CommentedSeq``
    copies its line and column records once per element (ruamel.yaml 0.19.1), so copying an
    array of N items costs O(N²): 7 s for 1,000 items, minutes for 10,000.
    """
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_data(item) for item in value]
    return value


class BadInputError(WorkflowException):
    """The workflow and the deployment do not fit (found before anything was submitted)."""


class QflowExecutor(JobExecutor):
    """Submits every CommandLineTool job to the dispatcher and waits only when it must.

    Before cwltool creates any directory, the workflow's steps are checked against the
    deployment, the job order against the workflow's inputs and the steps' container images
    (:mod:`qflow.engine.images`); only then ``on_validated``
    (the run directory is taken) runs and the workflow starts.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        job_source: str | None = None,
        on_validated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.job_source = job_source
        """The job order file, for messages (None: the workflow's defaults and arguments)."""
        self.on_validated = on_validated
        self.started_running = False
        """True once all input was validated and jobs may be submitted."""
        self.bad_input: list[str] = []
        self.errors: list[str] = []
        self.process: Process | None = None
        """The loaded workflow (or tool) that ran, once validated: the provenance crate's."""
        self.job_order: Any = None
        """Its resolved job order (inputs, defaults filled in), as cwltool handed it over."""

    def execute(
        self,
        process: Process,
        job_order_object: Any,
        runtime_context: RuntimeContext,
        logger: logging.Logger = _cwltool_logger,
    ) -> tuple[Any, str]:
        job_order_object = plain_data(job_order_object)
        problems = self.dispatcher.deployment.check_steps(step_paths(process))
        problems += job_order_problems(process, job_order_object, runtime_context,
                                       self.job_source)  # fmt: skip
        if not problems:  # the images are looked for (and pulled) only for a valid run
            problems = container_problems(process, self.dispatcher.deployment, runtime_context)
        if problems:
            self.bad_input = problems
            raise BadInputError("\n".join(problems))
        if self.on_validated is not None:
            try:
                self.on_validated()
            except Exception as exc:  # the run directory refused us: nothing was started
                self.bad_input = [str(exc)]
                raise BadInputError(str(exc)) from None
        self.started_running = True
        self.process, self.job_order = process, job_order_object
        return super().execute(process, job_order_object, runtime_context, logger)

    def run_jobs(
        self,
        process: Process,
        job_order_object: Any,
        logger: logging.Logger,
        runtime_context: RuntimeContext,
    ) -> None:
        lock = runtime_context.workflow_eval_lock
        assert lock is not None
        runtime_context.qflow_dispatcher = self.dispatcher  # type: ignore[attr-defined]
        runtime_context.qflow_may_start = self.dispatcher.may_start  # type: ignore[attr-defined]
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
        job = completion.job
        try:
            job.finish(completion.outcome, completion.error)
        except Exception as exc:  # noqa: BLE001 - reported as a run error, the run goes on
            log = logging.getLogger("qflow")
            log.debug("delivering %s failed", job.name, exc_info=True)
            if job.delivered_status not in (None, "success"):
                # cwltool cannot go on past a failed step (a loop iteration without outputs
                # to loop on): the step's own failure, logged already, says why
                self.errors.append(f"{job.name} failed")
            else:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                log.error("[job %s] cwltool could not take its outputs: %s", job.name, first)
                self.errors.append(f"{job.name}: {first}")
