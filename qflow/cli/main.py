"""The ``qflow`` command line: its parser, and the small commands (validate, report,
connectors); ``run`` and ``clean`` are in :mod:`qflow.cli.run`.

Exit codes: 0 success, 1 workflow failure, 2 bad input found before anything was
allocated, 130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from qflow import __version__
from qflow.cli.container_flags import (
    add_container_flags,
    container_flags_problem,
    runtime_context,
)
from qflow.cli.output import fail, say
from qflow.deployment import DeploymentError, load_deployment
from qflow.reporting.ledger import REPORT_NAME
from qflow.secrets import RedactingFilter


def cmd_run(args: argparse.Namespace) -> int:
    from qflow.cli.run import cmd_run as run

    return run(args)


def cmd_clean(args: argparse.Namespace) -> int:
    from qflow.cli.run import cmd_clean as clean

    return clean(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from qflow.cli.validate import validate_workflow

    try:
        deployment = load_deployment(args.deployment)
    except DeploymentError as exc:
        return fail(str(exc))
    problems = validate_workflow(args.workflow, deployment, runtime_context(args))
    if problems:
        return fail("\n".join(problems))
    say(f"{args.workflow} and {args.deployment} are valid; every step is bound.")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from qflow.reporting.table import ReportError, load_report, print_report

    plot_dir = Path(args.plot).resolve().parent if args.plot else None
    if plot_dir is not None and not plot_dir.is_dir():
        return fail(
            f"--plot {args.plot}: directory {plot_dir} does not exist. "
            "Fix: create it or give another path"
        )
    try:
        reports = [load_report(path) for path in args.report]
    except ReportError as exc:
        return fail(str(exc))
    for report in reports:
        print_report(report)
    if args.plot:
        from qflow.reporting.timeline import plot_timeline

        try:
            plot_timeline(reports, args.plot)
        except (OSError, ValueError) as exc:  # unwritable path, format matplotlib lacks
            return fail(f"--plot {args.plot}: {exc}. Fix: give a writable .png, .svg or .pdf")
        say(f"timeline written to {args.plot}")
    return 0


def cmd_connectors(args: argparse.Namespace) -> int:
    from rich.console import Console

    from qflow.registry import connector_class, registry

    out = Console(soft_wrap=True)
    for name in sorted(registry()):
        try:
            cls = connector_class(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            out.print(f"[bold]{name}[/bold]: cannot be loaded ({exc})")
            continue
        kind = "quantum" if cls.quantum else "classical"
        out.print(f"[bold]{name}[/bold] ({kind}, {cls.__module__}.{cls.__qualname__})")
        for key, field in cls.Config.model_fields.items():
            if key == "connector":
                continue
            default = "" if field.is_required() else f" = {field.default!r}"
            out.print(f"    {key}{default}: {field.description or ''}", highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qflow", description="Hybrid HPC + quantum workflows in CWL."
    )
    parser.add_argument("--version", action="version", version=f"qflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a CWL workflow on the locations of a deployment")
    run.add_argument("workflow", nargs="?", help="CWL workflow or tool")
    run.add_argument(
        "deployment",
        nargs="?",
        help="deployment.yml (omitted: the embedded default, every step on this host)",
    )
    run.add_argument("job", nargs="?", help="job order (omitted: the workflow's defaults)")
    run.add_argument("--outdir", default=".", help="where outputs and the report go")
    run.add_argument(
        "--resume",
        metavar="RUNDIR",
        help="continue the interrupted or crashed run whose --outdir was RUNDIR",
    )
    run.add_argument("--report", help=f"run report path (default OUTDIR/{REPORT_NAME})")
    run.add_argument(
        "--provenance",
        metavar="DIR",
        help="also write a Workflow Run RO-Crate of the run into DIR (new or empty)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.add_argument("--verbose", action="store_true", help="show cwltool's own log")
    add_container_flags(run)
    run.set_defaults(func=cmd_run)

    clean = sub.add_parser(
        "clean",
        help="end what a crashed run left alive (jobs, allocations, QPU tasks); "
        "the run can still be resumed",
    )
    clean.add_argument("rundir", metavar="RUNDIR", help="the crashed run's --outdir")
    clean.set_defaults(func=cmd_clean)

    validate = sub.add_parser("validate", help="check a workflow and a deployment together")
    validate.add_argument("workflow")
    validate.add_argument("deployment")
    add_container_flags(validate)
    validate.set_defaults(func=cmd_validate)

    report = sub.add_parser("report", help="print run reports as tables")
    report.add_argument(
        "report", nargs="+", help=f"{REPORT_NAME} or a run's --outdir (several: side by side)"
    )
    plot_help = "also draw the timeline (several reports: stacked per workflow)"
    report.add_argument("--plot", metavar="FILE.png", help=plot_help)
    report.set_defaults(func=cmd_report)

    connectors = sub.add_parser("connectors", help="list installed connectors and their keys")
    connectors.set_defaults(func=cmd_connectors)
    for name, text in SERVICES.items():
        sub.add_parser(name, help=text, add_help=False)  # own parser: see main()
    return parser


SERVICES = {
    "emulator": "serve the QPU service emulator (REST) on 127.0.0.1",
    "gateway": "serve a site-wide QPU gateway for a deployment's quantum locations",
}


def _service_main(name: str, argv: list[str]) -> int:
    if name == "emulator":
        from qflow.emulator.service import main as service
    else:
        from qflow.gateway.service import main as service
    return int(service(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="qflow: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICES:
        return _service_main(argv[0], argv[1:])
    # `qflow run wf.cwl [dep] [job] -- --input value`: what follows `--` are workflow inputs
    inputs = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.inputs = inputs
    if problem := container_flags_problem(args):
        return fail(problem)
    return int(args.func(args))
