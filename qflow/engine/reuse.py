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


class ReuseStore:
    """Key -> output directories of the successful step executions of a run directory.

    Only executions of the run being resumed are reused, each at most once: two executions
    of the same command in one run (a loop of ``sleep 1``) both run, as the workflow says.
    """

    def __init__(self, log: JsonLines) -> None:
        self._log = log
        self._previous: dict[str, list[str]] = {}
        for entry in log.read():
            self._previous.setdefault(entry["key"], []).append(entry["outdir"])
        self._lock = threading.Lock()

    def lookup(self, key: str) -> str | None:
        """An unused earlier execution with this key whose outputs are still there."""
        with self._lock:
            candidates = self._previous.get(key, [])
            while candidates:
                outdir = candidates.pop(0)
                if os.path.isdir(outdir):
                    return outdir
        return None

    def record(self, key: str, outdir: str) -> None:
        self._log.append({"key": key, "outdir": outdir})


def job_key(job: ConnectorJob, spec: JobSpec) -> str:
    """What makes two executions interchangeable, independent of this run's temp paths."""
    identities = _input_identities(job)
    replacements = [(job.outdir, "@outdir"), (job.tmpdir, "@tmpdir")]
    if job.stagedir:
        replacements.append((job.stagedir, "@stagedir"))
    for location, entry in job.pathmapper.items():
        identity = identities.get(location) or _stat_identity(entry.resolved)
        replacements += [(entry.target, identity), (entry.resolved, identity)]
    replacements.sort(key=lambda pair: len(pair[0]), reverse=True)  # longest paths first

    def canonical(text: str | None) -> str | None:
        if text is None:
            return None
        for path, stand_in in replacements:
            if path:
                text = text.replace(path, stand_in)
        return text

    volatile = {"HOME", "TMPDIR", "QFLOW_QPU_URL", "QFLOW_QPU_TOKEN"}  # per run or per step
    material = {
        "command": [canonical(arg) for arg in spec.command],
        "stdin": canonical(spec.stdin_path),
        "stdout": job.stdout,
        "stderr": job.stderr,
        "env": {k: canonical(v) for k, v in sorted(spec.env.items()) if k not in volatile},
        "step": spec.step,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


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
