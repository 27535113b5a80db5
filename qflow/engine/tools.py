"""cwltool process classes that know where each job sits in the workflow.

``make_tool`` is installed as ``LoadingContext.construct_tool_object``. It substitutes:

* :class:`QflowCommandLineTool`, whose jobs are :class:`~qflow.engine.job.ConnectorJob`
  objects (in the software container of a ``DockerRequirement``:
  :mod:`qflow.engine.containers`) and carry their full step path (``/loop/annealing``)
  and innermost loop iteration;
* :class:`QflowWorkflow`, which tags each step of a workflow run with its path and counts
  the iterations of ``cwltool:Loop`` steps (cwltool calls a loop step's ``job`` once per
  iteration on the same step object).

Both are carried down through ``RuntimeContext`` copies, so nesting, scatter and loops
compose without qflow interpreting any CWL itself.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from cwltool.command_line_tool import CallbackJob, CommandLineTool
from cwltool.context import LoadingContext, RuntimeContext
from cwltool.errors import UnsupportedRequirement, WorkflowException
from cwltool.job import JobBase
from cwltool.load_tool import load_tool
from cwltool.process import Process, shortname
from cwltool.workflow import Workflow, default_make_tool
from cwltool.workflow_job import WorkflowJob, WorkflowJobStep

from qflow.engine.containers import JOB_CLASSES, runtime_for, with_runtime
from qflow.engine.job import ConnectorJob
from qflow.engine.schema import QUANTUM_CANDIDATE
from qflow.placement import Placement

STEP_PATH_ATTR = "qflow_step_path"
ITERATION_ATTR = "qflow_iteration"


def step_path_of(runtime_context: RuntimeContext, process: Process) -> str:
    """The step path a job runs under; a bare tool run at top level is ``/<its name>``."""
    path = getattr(runtime_context, STEP_PATH_ATTR, None)
    return path or "/" + shortname(process.tool["id"]).removesuffix(".cwl")


class QflowCommandLineTool(CommandLineTool):
    """CommandLineTool whose jobs run through the connector of their mapped location."""

    def make_job_runner(self, runtimeContext: RuntimeContext) -> type[JobBase]:
        # cwltool chooses by the context's flags, which _tagged set for the placed location
        runner = super().make_job_runner(runtimeContext)
        ours = JOB_CLASSES.get(runner)
        if ours is None:
            raise UnsupportedRequirement(
                f"qflow does not run {runner.__name__} jobs (--user-space-docker-cmd): "
                "use --podman, --singularity or docker, or --no-container"
            )
        return ours

    qflow_loading_context: LoadingContext | None = None
    _quantum_tool: CommandLineTool | None = None

    def job(
        self, job_order: Any, output_callbacks: Any, runtimeContext: RuntimeContext
    ) -> Generator[Any, None, None]:
        path = step_path_of(runtimeContext, self)
        iteration = getattr(runtimeContext, ITERATION_ATTR, None)
        dispatcher = getattr(runtimeContext, "qflow_dispatcher", None)
        if dispatcher is None:  # cwltool without qflow's executor (loading, validation)
            yield from _tagged(self, job_order, output_callbacks, runtimeContext, path, iteration)
            return
        # Placed first, then the job of the implementation the placement calls for is built.
        # Yielding None tells cwltool "not ready, poll me later".
        placement = yield from _await(dispatcher.place(path, iteration))
        if placement is None:
            output_callbacks({}, "permanentFail")
            return
        if placement.quantum:
            result: dict[str, Any] = {}
            tool = self.quantum_implementation() or self
            yield from _tagged(
                tool,
                job_order,
                lambda out, status: result.update(out=out, status=status),
                runtimeContext,
                path,
                iteration,
                placement,
            )
            while not result:
                yield None
            if result["status"] == "success" or not dispatcher.placer.has_classical_candidate(path):
                output_callbacks(result["out"], result["status"])
                return
            reason = dispatcher.failure_of(placement)
            logging.getLogger("qflow").warning("%s: %s; falling back", path, reason)
            placement = yield from _await(dispatcher.place(path, iteration, fallback_reason=reason))
            if placement is None:
                output_callbacks(result["out"], result["status"])
                return
        yield from _tagged(
            self, job_order, output_callbacks, runtimeContext, path, iteration, placement
        )

    def quantum_implementation(self) -> CommandLineTool | None:
        """The tool named by this step's ``qflow:QuantumCandidate`` hint, loaded once."""
        hint, _ = self.get_requirement(QUANTUM_CANDIDATE)
        if not hint or not hint.get("quantum"):
            return None
        if self._quantum_tool is None:
            context = (self.qflow_loading_context or LoadingContext()).copy()
            context.construct_tool_object = make_tool
            tool = load_tool(str(hint["quantum"]), context)
            if not isinstance(tool, CommandLineTool):
                raise WorkflowException(
                    f"{hint['quantum']}: a quantum implementation must be a CommandLineTool"
                )
            _check_same_interface(self, tool)
            self._quantum_tool = tool
        return self._quantum_tool


def _await(future: Any) -> Generator[None, None, Any]:
    """Yield None until a dispatcher future is done; its result, or None if it failed."""
    while not future.done():
        yield None
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - reported in the ledger and the log
        logging.getLogger("cwltool").error("%s", exc)
        return None


def _tagged(
    tool: CommandLineTool,
    job_order: Any,
    output_callbacks: Any,
    runtime_context: RuntimeContext,
    path: str,
    iteration: int | None,
    placement: Placement | None = None,
) -> Generator[Any, None, None]:
    """cwltool's own job generator for ``tool``, each job tagged with where it belongs
    (and of the container runtime of the location it runs on, see qflow.engine.containers).

    A placement no job takes over (cwltool failed before building one, or found it in its
    cache) is given back.
    """
    dispatcher = getattr(runtime_context, "qflow_dispatcher", None)
    if placement is not None and dispatcher is not None:
        config = dispatcher.deployment.locations.get(placement.runs_on)
        runtime = runtime_for(getattr(config, "container_runtime", None), runtime_context)
        runtime_context = with_runtime(runtime_context, runtime)
    handed_over = False
    try:
        for job in CommandLineTool.job(tool, job_order, output_callbacks, runtime_context):
            if isinstance(job, ConnectorJob):
                job.step_path = path
                job.iteration = iteration
                job.placement = placement
                handed_over = True
            elif isinstance(job, CallbackJob) and dispatcher is not None:  # --cachedir hit
                dispatcher.ledger.reused(path, iteration)
            yield job
    finally:
        if placement is not None and not handed_over and dispatcher is not None:
            dispatcher.release_unused(placement)


def _check_same_interface(classical: Process, quantum: Process) -> None:
    """A quantum implementation must be a drop-in for the classical one."""

    def names(params: Any) -> set[str]:
        return {shortname(p["id"]) for p in params}

    for kind in ("inputs", "outputs"):
        ours, theirs = names(classical.tool[kind]), names(quantum.tool[kind])
        if ours != theirs:
            raise WorkflowException(
                f"{quantum.tool['id']}: its {kind} {sorted(theirs)} differ from those of the "
                f"classical implementation {classical.tool['id']} {sorted(ours)}"
            )


class TaggedWorkflowJobStep(WorkflowJobStep):
    """A workflow step run that passes its path and loop iteration to what it runs."""

    def __init__(self, step: Any, parent_path: str) -> None:
        super().__init__(step)
        self.path = f"{parent_path}/{shortname(self.id)}"
        self.is_loop = bool(self.tool.get("loop"))
        self.calls = 0

    def job(
        self, joborder: Any, output_callback: Any, runtimeContext: RuntimeContext
    ) -> Generator[Any, None, None]:
        runtimeContext = runtimeContext.copy()
        setattr(runtimeContext, STEP_PATH_ATTR, self.path)
        if self.is_loop:
            setattr(runtimeContext, ITERATION_ATTR, self.calls)
            self.calls += 1
        yield from super().job(joborder, output_callback, runtimeContext)


class QflowWorkflow(Workflow):
    """Workflow whose step runs are tagged (see :class:`TaggedWorkflowJobStep`)."""

    def job(
        self, job_order: Any, output_callbacks: Any, runtimeContext: RuntimeContext
    ) -> Generator[Any, None, None]:
        parent_path = getattr(runtimeContext, STEP_PATH_ATTR, None) or ""
        for item in super().job(job_order, output_callbacks, runtimeContext):
            if isinstance(item, WorkflowJob) and not getattr(item, "qflow_tagged", False):
                # The WorkflowJob is yielded before its steps run, so replacing them here
                # is seen by everything that follows.
                item.steps = [TaggedWorkflowJobStep(s.step, parent_path) for s in item.steps]
                item.qflow_tagged = True  # type: ignore[attr-defined]
            yield item


def make_tool(toolpath_object: Any, loadingContext: LoadingContext) -> Process:
    """``construct_tool_object`` hook: qflow's classes for tools and workflows (its
    parameter is named as cwltool's hook type names it)."""
    loading_context = loadingContext
    cls = toolpath_object.get("class") if hasattr(toolpath_object, "get") else None
    if cls == "CommandLineTool":
        tool = QflowCommandLineTool(toolpath_object, loading_context)
        tool.qflow_loading_context = loading_context
        return tool
    if cls == "Workflow":
        return QflowWorkflow(toolpath_object, loading_context)
    return default_make_tool(toolpath_object, loading_context)


def step_paths(process: Process) -> list[str]:
    """Every step path of a loaded process (workflow steps, recursively), in order.

    These are the keys deployment.yml binds; a bare tool has the single path ``/<name>``.
    """
    return [path for path, _ in steps_of(process)]


def steps_of(process: Process, prefix: str = "") -> list[tuple[str, Process]]:
    """Every step path of a loaded process with what runs there (:func:`step_paths`)."""
    if not isinstance(process, Workflow):
        name = "/" + shortname(process.tool["id"]).removesuffix(".cwl")
        return [(name, process)] if not prefix else []
    steps: list[tuple[str, Process]] = []
    for step in process.steps:
        if not isinstance(step.embedded_tool, (Workflow, CommandLineTool)):
            continue  # ExpressionTools and operations run inside the engine, nowhere else
        path = f"{prefix}/{shortname(step.id)}"
        steps.append((path, step.embedded_tool))
        steps.extend(steps_of(step.embedded_tool, path))
    return steps
