"""``qflow run`` and ``qflow clean``: what is checked before a run touches its directory.

Every check here only reads: a bad argument, a busy or crashed run directory, an --outdir or
--report that cannot be written are reported (exit 2) before anything is created, so a
mistaken command never damages an earlier run's state.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from qflow.cli.container_flags import container_flags
from qflow.cli.output import fail, say
from qflow.deployment import (
    TOP_LEVEL_KEYS,
    Deployment,
    DeploymentError,
    embedded_default,
    load_deployment,
)
from qflow.reporting.ledger import REPORT_NAME
from qflow.rundir.state import Invocation, RunState, RunStateError


class BadArguments(Exception):
    """A command line that cannot run; the message says why and the fix."""


def _deployment(path: str | None) -> Deployment:
    return load_deployment(path) if path else embedded_default()


def _writable(path: Path, flag: str, directory: bool) -> None:
    """``path`` can be created or written (nothing is created to find out)."""
    kind = "directory" if directory else "file"
    if path.exists():
        if path.is_dir() != directory:
            other = "a directory" if path.is_dir() else "a file"
            raise BadArguments(f"{flag} {path} is {other}, not a {kind}. Fix: give a {kind} path")
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            raise BadArguments(f"{flag} {path} is not writable. Fix: give a {kind} you can write")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BadArguments(
            f"{flag} {path} cannot be created: {parent} is not a writable directory. "
            f"Fix: give a {kind} under a directory you can write"
        )


def check_provenance(path: str) -> None:
    """``--provenance DIR`` can take a crate: a new or empty directory that can be written."""
    target = Path(path)
    _writable(target, "--provenance", directory=True)
    if target.is_dir() and any(target.iterdir()):
        raise BadArguments(
            f"--provenance {target} exists and is not empty (a crate goes only into a new or "
            "empty directory, so nothing is mixed in or lost). Fix: give a new directory, or "
            "empty this one"
        )


def check_run_directory(state: RunState, resume: bool) -> None:
    """The directory is free for this command (reads only)."""
    holder = state.holder()
    if holder is not None:
        raise BadArguments(
            f"{state.rundir} is in use by {holder}. Fix: wait for that run to end, or give "
            "another --outdir"
        )
    if resume:
        state.invocation()  # raises RunStateError for a missing or damaged run.json
        return
    if state.condition() == "crashed":
        raise BadArguments(
            f"{state.rundir} holds a run that did not end (crashed or killed), which may still "
            f"hold jobs or QPU tasks. Fix: resume it with `qflow run --resume {state.rundir}`, "
            f"or end what it left with `qflow clean {state.rundir}` and run again"
        )


def looks_like_deployment(path: str) -> bool:
    """Tells ``qflow run WF X`` apart: is X a deployment or a job order?

    cwltool takes only a YAML mapping of the workflow's inputs as a job order. A mapping with a
    deployment's own keys (locations, bindings, policy), or with nothing but deployment keys
    (``version: 1`` alone), is a deployment; any other mapping is a job order. What cwltool
    would refuse anyway (a directory, a file that is no YAML mapping) is a deployment when its
    name says so or, if it does not even parse, a line starts with one of those keys: its
    error is then reported as a deployment's, with the line and the fix.
    """
    file = Path(path)
    if file.is_dir():
        return True
    named = file.suffix in (".yml", ".yaml") and "deploy" in file.name.lower()
    own_keys = ("locations", "bindings", "policy")  # `version` alone could be an input's name
    try:
        raw = file.read_bytes()
    except OSError:  # missing or unreadable: reported by whoever loads it
        return named
    try:
        data = YAML(typ="safe").load(raw.decode("utf-8"))
    except (YAMLError, ValueError):  # bad syntax, bytes that are not UTF-8, a bad date
        text = raw.decode("utf-8", errors="replace")
        return named or any(re.search(rf"^['\"]?{key}['\"]?\s*:", text, re.M) for key in own_keys)
    if not isinstance(data, dict):
        return named
    keys = set(data)
    return bool(keys & set(own_keys)) or ("version" in keys and keys <= set(TOP_LEVEL_KEYS))


def new_invocation(args: argparse.Namespace) -> Invocation:
    """The invocation a ``qflow run WORKFLOW ...`` command line stands for."""
    deployment_path, job = args.deployment, args.job
    if deployment_path and job is None and not looks_like_deployment(deployment_path):
        deployment_path, job = None, deployment_path
    for label, path in (("workflow", args.workflow), ("job order", job)):
        if path and not Path(path).is_file():
            raise BadArguments(f"{label} file {path} does not exist. Fix: check the path")
    outdir = Path(args.outdir).resolve()
    return Invocation(
        workflow=str(Path(args.workflow).resolve()),
        deployment=str(Path(deployment_path).resolve()) if deployment_path else None,
        job=str(Path(job).resolve()) if job else None,
        inputs=list(args.inputs),
        report=str(Path(args.report).resolve()) if args.report else str(outdir / REPORT_NAME),
    )


def cmd_run(args: argparse.Namespace) -> int:
    try:
        if args.resume:
            if args.workflow:
                raise BadArguments(
                    "--resume takes the run directory only; the workflow is the run's own"
                )
            if args.outdir != ".":
                raise BadArguments("--resume RUNDIR is the run's --outdir; leave --outdir out")
            state = RunState(Path(args.resume).resolve())
            check_run_directory(state, resume=True)
            invocation = state.invocation()
            if args.report:  # this resume's report goes where it says
                report = str(Path(args.report).resolve())
                invocation = dataclasses.replace(invocation, report=report)
        else:
            if not args.workflow:
                raise BadArguments("give a WORKFLOW to run, or --resume RUNDIR")
            invocation = new_invocation(args)
            deployment = _deployment(invocation.deployment)
            state = RunState(Path(args.outdir).resolve())
            _writable(state.rundir, "--outdir", directory=True)
            check_run_directory(state, resume=False)
        _writable(Path(invocation.report), "--report", directory=False)
        if args.provenance:
            check_provenance(args.provenance)
        if args.resume:
            deployment = _deployment(invocation.deployment)
    except (BadArguments, RunStateError, DeploymentError) as exc:
        return fail(str(exc))
    return _run(invocation, state, args, deployment, resume=bool(args.resume))


def _run(
    invocation: Invocation,
    state: RunState,
    args: argparse.Namespace,
    deployment: Deployment,
    resume: bool,
) -> int:
    from qflow.engine.runner import RunDirectory, run_cwl
    from qflow.reporting.ledger import Ledger

    ledger = Ledger()
    argv = [
        "--outdir", str(state.rundir), "--tmpdir-prefix", state.tmp_prefix,
        "--tmp-outdir-prefix", state.steps_prefix, "--disable-color",
    ]  # fmt: skip
    if not args.verbose:
        argv.append("--quiet")
    argv += container_flags(args)
    argv += [invocation.workflow, *([invocation.job] if invocation.job else []), *invocation.inputs]
    created = state.new_directories()
    with contextlib.ExitStack() as stack:
        if not args.quiet:
            from qflow.reporting.progress import Progress  # rich: not for --quiet runs

            stack.enter_context(Progress(ledger))
        result = run_cwl(
            argv,
            deployment,
            report_path=invocation.report,
            ledger=ledger,
            rundir=RunDirectory(state, None if resume else invocation),
            provenance=str(Path(args.provenance).resolve()) if args.provenance else None,
        )
    if result.status is None:  # refused before it ran: leave no trace
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
    if result.report is not None and not args.quiet:
        totals = result.report["totals"]
        reused = sum(1 for r in result.report["steps"] if r["status"] == "reused")
        say(
            f"qflow: {result.status}: {totals['steps']} step executions ({reused} reused), "
            f"{totals['node_seconds']:.1f} node-s, {totals['qpu_seconds']:.1f} QPU-s, "
            f"{totals['fallbacks']} fallbacks; report: {invocation.report}"
            + (f"; provenance: {args.provenance}" if args.provenance else "")
        )
    return result.exit_code


def cmd_clean(args: argparse.Namespace) -> int:
    """End what a crashed run left alive (jobs, allocations, QPU tasks and leases)."""
    from qflow.engine.dispatcher import Dispatcher
    from qflow.reporting.ledger import Ledger

    state = RunState(Path(args.rundir).resolve())
    try:
        check_run_directory(state, resume=True)
        deployment = _deployment(state.invocation().deployment)
    except (BadArguments, RunStateError, DeploymentError) as exc:
        return fail(str(exc))
    leftovers = state.previous().alive
    state.begin(None)
    dispatcher = Dispatcher(deployment, Ledger(), state.journal)
    try:
        ended, failed = dispatcher.end_leftovers(leftovers)
    finally:
        dispatcher.close()
        state.finish("cleaned")
    for line in ended:
        say(f"ended: {line}", markup=False)
    for line in failed:
        say(f"could not end: {line}", markup=False)
    if not leftovers:
        say(f"{state.rundir}: nothing was left alive", markup=False)
    return 1 if failed else 0
