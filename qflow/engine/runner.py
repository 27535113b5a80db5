"""One run of a CWL document through cwltool's ``main`` with qflow's executor and tools.

Used by both ``qflow run`` and ``qflow-cwl-runner``: cwltool parses its own options, loads and
validates the document and the job order, and qflow supplies the process classes
(:func:`~qflow.engine.tools.make_tool`) and the asynchronous executor. An interrupt
(SIGINT/SIGTERM) cancels every in-flight step execution through its connector before exit.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import IO, Any

import cwltool.main
from cwltool.argparser import arg_parser
from cwltool.context import LoadingContext

from qflow.deployment import Deployment
from qflow.engine.dispatcher import Dispatcher
from qflow.engine.executor import QflowExecutor
from qflow.engine.run_state import RunState
from qflow.engine.schema import install_schemas
from qflow.engine.tools import make_tool
from qflow.ledger import Ledger, RunStatus, write_report
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


def run_cwl(
    cwltool_argv: list[str],
    deployment: Deployment,
    *,
    report_path: str | None = None,
    ledger: Ledger | None = None,
    stdout: IO[str] | None = None,
    bad_input_exit: bool = True,
    state: RunState | None = None,
    orphans: list[dict[str, Any]] | None = None,
) -> RunResult:
    """Run ``cwltool <cwltool_argv>`` with every CommandLineTool placed by ``deployment``.

    With ``bad_input_exit`` every failure before the first submission exits 2 (``qflow run``);
    without it cwltool's own codes are kept (33 = unsupported feature, which cwltest reads),
    except for unbound steps, which are always 2.
    """
    argv = list(cwltool_argv)
    if "--enable-ext" not in argv:
        argv.insert(0, "--enable-ext")  # cwltool:Loop is always on
    args = arg_parser().parse_args(argv)
    workflow = args.workflow  # cwltool's main deletes it from args
    loading_context = LoadingContext(vars(args))
    loading_context.construct_tool_object = make_tool
    ledger = ledger or Ledger()
    if state is not None:
        ledger.subscribe(state.on_event)
    dispatcher = Dispatcher(deployment, ledger)
    if state is not None:
        dispatcher.reuse = state.reuse_store()
    if orphans:
        dispatcher.cancel_orphans(orphans)
    executor = QflowExecutor(dispatcher)
    log_handler = logging.StreamHandler(sys.stderr)  # plain, instead of cwltool's coloredlogs
    log_handler.addFilter(RedactingFilter())
    cwltool_logger = logging.getLogger("cwltool")
    cwltool_logger.propagate = False  # its handler's level follows --quiet/--debug
    logging.getLogger("salad").propagate = False  # cwltool gives salad the same handler
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
            except KeyboardInterrupt:
                _logger.warning("interrupted: cancelling every running step")
                dispatcher.cancel_all()
                code, status = EXIT_SIGINT, "cancelled"
            except Terminated:
                _logger.warning("terminated: cancelling every running step")
                dispatcher.cancel_all()
                code, status = EXIT_SIGTERM, "cancelled"
    finally:
        dispatcher.close()
        cwltool_logger.removeHandler(log_handler)
        cwltool_logger.propagate = True
    if not executor.started_running and status != "cancelled":
        # Everything cwltool refused before the executor ran (CWL syntax, job order,
        # unsupported requirements) and unbound steps: bad input, nothing was submitted.
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
    return RunResult(code, status, report, ledger)
