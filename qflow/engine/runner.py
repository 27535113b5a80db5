"""One run of a CWL document through cwltool's ``main`` with qflow's executor and tools.

Used by both ``qflow run`` and ``qflow-cwl-runner``: cwltool parses its own options, loads and
validates the document and the job order, and qflow supplies the process classes
(:func:`~qflow.engine.tools.make_tool`) and the asynchronous executor. With a run directory
(``qflow run``), nothing in it is touched before all input was validated; then it is locked,
a resumed run ends what its crashed predecessor left alive, and the journal records every
resource from then on. An interrupt (SIGINT/SIGTERM) cancels every in-flight step execution
through its connector; a second one stops waiting for that, and the report is written anyway.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

import cwltool.main
from cwltool.argparser import arg_parser
from cwltool.context import LoadingContext

from qflow.deployment import Deployment
from qflow.engine import cwltool_scale, javascript
from qflow.engine.dispatcher import Dispatcher
from qflow.engine.executor import QflowExecutor
from qflow.engine.reuse import ReuseStore
from qflow.engine.schema import install_schemas
from qflow.engine.tools import make_tool
from qflow.placement.history import History, default_history_path
from qflow.reporting.ledger import Ledger, RunStatus, write_report
from qflow.rundir.journal import NO_JOURNAL
from qflow.rundir.state import Invocation, RunState
from qflow.secrets import RedactingFilter

_logger = logging.getLogger("qflow")

EXIT_BAD_INPUT = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM arrived; unwinds the run like KeyboardInterrupt does for SIGINT."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception in the main thread, so cleanup code runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class RunResult:
    exit_code: int
    status: RunStatus | None
    """None when nothing ran (bad input)."""
    report: dict[str, Any] | None
    ledger: Ledger


@dataclasses.dataclass
class RunDirectory:
    """``qflow run``'s run directory: its state, and a new invocation (None: resume)."""

    state: RunState
    invocation: Invocation | None


def history_for(deployment: Deployment, workflow: str) -> History:
    """The placement history of this site (``policy.history``; ``none``: this run only)."""
    setting = deployment.policy.history
    path = None if setting == "none" else Path(setting) if setting else default_history_path()
    return History(path, Path(workflow).name)


def run_cwl(
    cwltool_argv: list[str],
    deployment: Deployment,
    *,
    report_path: str | None = None,
    ledger: Ledger | None = None,
    stdout: IO[str] | None = None,
    bad_input_exit: bool = True,
    rundir: RunDirectory | None = None,
    provenance: str | None = None,
) -> RunResult:
    """Run ``cwltool <cwltool_argv>`` with every CommandLineTool placed by ``deployment``.

    With ``bad_input_exit`` every failure before the first submission exits 2 (``qflow run``);
    without it cwltool's own codes are kept (33 = unsupported feature, which cwltest reads),
    except for unbound steps, which are always 2. With ``provenance`` (a new or empty
    directory) the run's provenance crate is written there along with the report.
    """
    argv = list(cwltool_argv)
    if "--enable-ext" not in argv:
        argv.insert(0, "--enable-ext")  # cwltool:Loop is always on
    args = arg_parser().parse_args(argv)
    workflow = args.workflow  # cwltool's main deletes it from args
    job_source = args.job_order[0] if args.job_order and not args.job_order[0].startswith("-") \
        else None  # fmt: skip
    loading_context = LoadingContext(vars(args))
    loading_context.construct_tool_object = make_tool
    ledger = ledger or Ledger()
    state = rundir.state if rundir else None
    if state is not None:
        ledger.subscribe(state_listener(state))
    dispatcher = Dispatcher(
        deployment,
        ledger,
        state.journal if state else NO_JOURNAL,
        history_for(deployment, workflow),
    )

    def take_run_directory() -> None:
        if rundir is not None:
            _take(rundir, dispatcher, ledger)

    executor = QflowExecutor(dispatcher, job_source=job_source, on_validated=take_run_directory)
    cwltool_scale.install()
    javascript.install()
    log_handler = logging.StreamHandler(sys.stderr)  # plain, instead of cwltool's coloredlogs
    log_handler.addFilter(RedactingFilter())
    cwltool_logger = logging.getLogger("cwltool")
    cwltool_logger.propagate = False  # its handler's level follows --quiet/--debug
    logging.getLogger("salad").propagate = False  # cwltool gives salad the same handler
    if not args.debug:  # cwl_utils logs JavaScript failures with tracebacks; cwltool's own
        logging.getLogger("cwl_utils").setLevel(logging.CRITICAL)  # error says what failed
    started = time.time()
    status: RunStatus
    try:
        with sigterm_raises():
            try:
                code = cwltool.main.main(
                    args=args,
                    executor=executor,
                    loadingContext=loading_context,
                    stdout=stdout or sys.stdout,
                    logger_handler=log_handler,
                    custom_schema_callback=install_schemas,
                )
                status = "success" if code == 0 else "failed"
            except (KeyboardInterrupt, Terminated) as exc:
                code = EXIT_SIGINT if isinstance(exc, KeyboardInterrupt) else EXIT_SIGTERM
                status = "cancelled"
                _cancel(dispatcher, "interrupted" if code == EXIT_SIGINT else "terminated")
    finally:
        with _second_interrupt_stops_waiting("stopping"):
            dispatcher.close()
        cwltool_logger.removeHandler(log_handler)
        cwltool_logger.propagate = True
    if not executor.started_running and status != "cancelled":
        # Everything cwltool refused before the executor ran (CWL syntax, job order,
        # unsupported requirements), unbound steps, a busy run directory: bad input,
        # nothing was submitted, nothing written.
        if code and (bad_input_exit or executor.bad_input):
            code = EXIT_BAD_INPUT
        return RunResult(code, None, None, ledger)
    outputs = executor.final_output[0] if executor.final_output else None
    report = ledger.report(
        workflow=workflow,
        deployment=deployment.source,
        status=status,
        started=started,
        ended=time.time(),
        outputs=outputs,
    )
    if report_path:
        write_report(report, report_path)
    if provenance:
        code = _write_provenance(provenance, report, executor, deployment, code)
    if state is not None:
        state.finish(status)
    return RunResult(code, status, report, ledger)


def _write_provenance(
    target: str, report: dict[str, Any], executor: QflowExecutor, deployment: Deployment, code: int
) -> int:
    """The crate of the run; a crate that cannot be written fails an otherwise good run."""
    if executor.process is None:  # interrupted before the workflow was even validated
        _logger.error("no provenance crate: the run was stopped before the workflow ran")
        return code
    try:
        from qflow.provenance import write_crate

        write_crate(target, report, executor.process, executor.job_order, deployment)
    except Exception as exc:  # noqa: BLE001 - the run is over: say why, never lose its report
        _logger.error("could not write the provenance crate to %s: %s", target, exc)
        return code or 1
    return code


def state_listener(state: RunState) -> Any:
    """Appends every ended execution to the run directory's records (survives a crash)."""

    def on_event(event: str, record: Any) -> None:
        if event == "ended":
            state.records.append(record.as_report())

    return on_event


def _take(rundir: RunDirectory, dispatcher: Dispatcher, ledger: Ledger) -> None:
    """All input is valid: lock the run directory; a resume ends what the crashed run left."""
    state = rundir.state
    leftovers = state.previous().alive if rundir.invocation is None else []
    state.begin(rundir.invocation)
    if rundir.invocation is None:
        ended, failed = dispatcher.end_leftovers(leftovers)
        for line in ended:
            _logger.warning("ended what the interrupted run left: %s", line)
        for line in failed:
            _logger.warning("could not end what the interrupted run left: %s (`qflow clean "
                            "%s` tries again)", line, state.rundir)  # fmt: skip
        ledger.remember(state.previous_records())
    dispatcher.reuse = ReuseStore(state.reuse_log)


def _cancel(dispatcher: Dispatcher, what: str) -> None:
    _logger.warning("%s: cancelling every running step (interrupt again to stop waiting)", what)
    with _second_interrupt_stops_waiting("cancelling"):
        dispatcher.cancel_all()


@contextmanager
def _second_interrupt_stops_waiting(doing: str) -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) while qflow waits for connectors stops the wait: what
    is not ended yet stays in the journal for ``qflow clean``; the report is still written."""
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        _logger.warning("interrupted again while %s: not waiting any more; `qflow clean` "
                        "ends whatever is left", doing)  # fmt: skip
