"""Two changes to cwltool that keep a scatter of N steps linear in N (installed by the runner).

Both are upstream candidates (docs/benchmarks.md, "upstream notes"); CWL semantics stay
cwltool's: which jobs a scatter makes, their order and how their outputs are gathered.

* ``parallel_steps`` (cwltool.workflow_job) drives a scatter's per-element job generators.
  cwltool's version starts every element at once and, after each job it yields, rescans all
  generators from the first one, finished ones included: O(N) per event, O(N²) per scatter,
  and a generator (with its job order) alive for every element waiting for a slot. Here each
  generator is dropped when it is done, polling resumes where it stopped, and an element
  is started only while the dispatcher's look-ahead (steps waiting for a placement) has
  room: jobs are built about as fast as locations take them, so memory stays flat.
* ``uniquename`` (cwltool.process) names every job ``stem``, ``stem_2``, ``stem_3``...
  searching from ``stem`` each time: O(N) per job. Here the next suffix of each stem is
  kept; the names are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import cwltool.command_line_tool
import cwltool.process
import cwltool.workflow_job
from cwltool.context import RuntimeContext, getdefault
from cwltool.errors import WorkflowException
from cwltool.loghandler import _logger

_original_uniquename = cwltool.process.uniquename
_next_suffix: dict[str, int] = {}


def uniquename(stem: str, names: set[str] | None = None) -> str:
    """cwltool's ``uniquename`` (the first free ``stem``, ``stem_2``, ...), in O(1) per name
    for cwltool's own process-wide set (``names`` None), which only ever grows."""
    if names is not None:
        return _original_uniquename(stem, names)
    return next_free_name(stem, cwltool.process._names, _next_suffix)


def next_free_name(stem: str, taken: set[str], next_suffix: dict[str, int]) -> str:
    """The first of ``stem``, ``stem_2``, ``stem_3``... not in ``taken`` (added to it),
    starting at ``next_suffix[stem]``: below it every name is taken already."""
    suffix = next_suffix.get(stem, 1)
    name = stem if suffix == 1 else f"{stem}_{suffix}"
    while name in taken:
        suffix += 1
        name = f"{stem}_{suffix}"
    next_suffix[stem] = suffix + 1
    taken.add(name)
    return name


def parallel_steps(
    steps: list[Generator[Any, None, None] | None],
    rc: Any,
    runtimeContext: RuntimeContext,
) -> Generator[Any, None, None]:
    """cwltool's scatter driver: yields the elements' jobs, ``None`` when none is ready.

    ``rc`` is cwltool's ``ReceiveScatterOutput`` (``completed``, ``total``,
    ``processStatus``, ``receive_scatter_output``). An element is started only when
    ``runtimeContext.qflow_may_start()`` says there is room (always, without qflow's
    executor).
    """
    may_start: Callable[[], bool] = getattr(runtimeContext, "qflow_may_start", lambda: True)
    stop_on_error = getdefault(runtimeContext.on_error, "stop") == "stop"
    active: dict[int, Generator[Any, None, None]] = {}
    """Started elements whose generators are not done yet, in element order."""
    started = 0

    def failing() -> bool:
        return stop_on_error and rc.processStatus not in ("success", "skipped")

    def advance(
        index: int, generator: Generator[Any, None, None]
    ) -> Generator[Any, None, tuple[bool, int]]:
        """Yield ``generator``'s ready jobs; whether it is done, and how many it gave."""
        jobs = 0
        try:
            for job in generator:
                if job is None or failing():  # cwltool drops a job made after a failure too
                    return False, jobs
                jobs += 1
                yield job
        except WorkflowException as exc:
            _logger.error("Cannot make scatter job: %s", str(exc))
            _logger.debug("", exc_info=True)
            rc.receive_scatter_output(index, {}, "permanentFail")
        return True, jobs

    while rc.completed < rc.total:
        progress = False
        for index, generator in list(active.items()):
            if failing():
                break
            done, jobs = yield from advance(index, generator)
            progress = progress or jobs > 0
            if done:
                del active[index]
        while started < len(steps) and not failing() and may_start():
            index, started = started, started + 1
            element = steps[index]
            steps[index] = None  # ReceiveScatterOutput keeps the list: let the element go
            if element is None:
                continue
            done, jobs = yield from advance(index, element)
            progress = progress or jobs > 0
            if not done:
                active[index] = element
        if not progress and rc.completed < rc.total:
            yield None


def install() -> None:
    """Put both into cwltool (idempotent): the modules that call them look them up there."""
    cwltool.workflow_job.parallel_steps = parallel_steps
    cwltool.workflow_job.uniquename = uniquename
    cwltool.command_line_tool.uniquename = uniquename
