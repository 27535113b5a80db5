"""Reuse of finished step executions when a run is resumed.

cwltool's own ``--cachedir`` would do, but it builds every job twice (once under canonical
paths to compute the key), which doubles the JavaScript evaluations per step. Here the key
is computed from the job cwltool already built: its command line, redirections and
environment, with the run-specific paths (output dir, temp dir, staged inputs) replaced by
what they stand for (input files by their checksum, or size and mtime). A finished
execution's output directory is recorded under its key ; a
resumed run that builds a job with the same key hard-links those outputs into the new output
directory instead of running it again. Entries are lines of ``RUNDIR/.qflow/reuse.jsonl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
from typing import TYPE_CHECKING, Any

from cwltool.utils import visit_class

if TYPE_CHECKING:
    from qflow.connector import JobSpec
    from qflow.engine.job import ConnectorJob
    from qflow.rundir.state import JsonLines


@dataclasses.dataclass(frozen=True)
class ReuseKey:
    """What defines a step execution, hashed: the whole, and each part (to say which
    differs when an execution of the interrupted run is not reused)."""

    key: str
    parts: dict[str, str]


class ReuseStore:
    """Key -> output directories of the successful step executions of a run directory.

    Only executions of the run being resumed are reused, each at most once: two executions
    of the same command in one run (a loop of ``sleep 1``) both run, as the workflow says.
    """

    def __init__(self, log: JsonLines) -> None:
        self._log = log
        self._previous: dict[str, list[str]] = {}
        self._parts: dict[tuple[str, int | None], list[dict[str, str]]] = {}
        for entry in log.read():
            self._previous.setdefault(entry["key"], []).append(entry["outdir"])
            if "step" in entry:
                where = (entry["step"], entry.get("iteration"))
                self._parts.setdefault(where, []).append(entry.get("parts", {}))
        self._lock = threading.Lock()

    def lookup(self, key: ReuseKey) -> str | None:
        """An unused earlier execution with this key whose outputs are still there."""
        with self._lock:
            candidates = self._previous.get(key.key, [])
            while candidates:
                outdir = candidates.pop(0)
                if os.path.isdir(outdir):
                    return outdir
        return None

    def why_not(self, step: str, iteration: int | None, key: ReuseKey) -> str | None:
        """Why the interrupted run's execution of this step and iteration is not reused
        (None: it had none)."""
        earlier = self._parts.get((step, iteration))
        if not earlier:
            return None
        differ = [name for name, value in key.parts.items() if earlier[0].get(name) != value]
        if not differ:
            return "its outputs are gone or were already reused"
        return f"its {' and '.join(differ)} differ from the interrupted run's"

    def record(self, key: ReuseKey, outdir: str, step: str, iteration: int | None) -> None:
        self._log.append({"key": key.key, "outdir": outdir, "step": step,
                          "iteration": iteration, "parts": key.parts})  # fmt: skip


def job_key(job: ConnectorJob, spec: JobSpec) -> ReuseKey:
    """What makes two executions interchangeable: the command line, the environment the
    step declares (EnvVarRequirement, not what qflow inherited: a PATH of another shell
    must not prevent reuse) and the contents of its inputs; never this run's temp paths."""
    identities = _input_identities(job)
    fixed = [(job.outdir, "@outdir"), (job.tmpdir, "@tmpdir")]
    if job.stagedir:
        fixed.append((job.stagedir, "@stagedir"))
    inputs, shapes = list(fixed), list(fixed)
    for location, entry in job.pathmapper.items():
        identity = identities.get(location) or _stat_identity(entry.resolved)
        inputs += [(entry.target, identity), (entry.resolved, identity)]
        shapes += [(entry.target, "@input"), (entry.resolved, "@input")]

    def canonical(text: str | None, replacements: list[tuple[str, str]]) -> str | None:
        if text is None:
            return None
        for path, stand_in in sorted(replacements, key=lambda p: len(p[0]), reverse=True):
            if path:
                text = text.replace(path, stand_in)
        return text

    declared = _declared_variables(job)
    staged = sorted(identity for _, identity in inputs[len(fixed) :: 2])
    material = {
        "command line": [canonical(arg, shapes) for arg in spec.command]
        + [canonical(spec.stdin_path, shapes), job.stdout, job.stderr],
        "inputs": [canonical(arg, inputs) for arg in spec.command]
        + [canonical(spec.stdin_path, inputs), *staged],
        "environment": {
            k: canonical(v, inputs) for k, v in sorted(spec.env.items()) if k in declared
        },  # fmt: skip
    }
    parts = {name: _digest(value) for name, value in material.items()}
    return ReuseKey(_digest({"step": spec.step, **parts}), parts)


def _declared_variables(job: ConnectorJob) -> set[str]:
    """Variables the step's EnvVarRequirement sets (the rest is inherited or per run)."""
    names: set[str] = set()
    for requirement in [*job.requirements, *job.hints]:
        if requirement.get("class") == "EnvVarRequirement":
            envdef: Any = requirement.get("envDef") or []
            if isinstance(envdef, dict):  # the map form, not normalised everywhere
                names.update(envdef)
            else:
                names.update(str(entry.get("envName")) for entry in envdef)
    return names


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _input_identities(job: ConnectorJob) -> dict[str, str]:
    """File location -> checksum, for the inputs cwltool already checksummed."""
    found: dict[str, str] = {}

    def note(obj: dict[str, Any]) -> None:
        if obj.get("checksum") and obj.get("location"):
            found[obj["location"]] = f"@{obj['checksum']}"

    visit_class(job.joborder, ("File",), note)
    return found


def _stat_identity(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"@{os.path.basename(path)}"
    return f"@{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}"


def link_outputs(source: str, target: str) -> None:
    """Give ``target`` the files of a finished execution's output dir (hard links: no copy)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True, symlinks=True)
