"""``--provenance DIR``: a Workflow Run RO-Crate (provenance profile 0.5) of a run.

The command lines check DIR before anything runs (``qflow.cli.run.check_provenance``: an
unusable DIR is bad input, exit 2); :func:`write_crate` runs where the run report is
written, from the same report, so a failed or cancelled run gets its crate too.
docs/provenance.md describes the crate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cwltool.process import Process

from qflow.deployment import Deployment
from qflow.secrets import redact


def write_crate(
    target: str | Path,
    report: dict[str, Any],
    process: Process,
    job_order: Any,
    deployment: Deployment,
) -> None:
    """Write the crate of the run ``report`` describes into ``target`` (new or empty)."""
    from qflow.provenance.crate import build_crate  # rocrate is loaded only when asked for

    build_crate(report, process, job_order, deployment).write(Path(target))
    metadata = Path(target) / "ro-crate-metadata.json"  # like the report: no credential in it
    metadata.write_text(redact(metadata.read_text(encoding="utf-8")), encoding="utf-8")


__all__ = ["write_crate"]
