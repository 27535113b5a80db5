"""Where a step execution was placed before its job was built (steps bound to QPUs).

A step whose candidates include a quantum location is placed *before* cwltool builds its
job: the placement decides which implementation runs (a quantum candidate's quantum tool on
a QPU lease, its classical ``run`` elsewhere), and a fallback is a new placement on a
classical candidate with the reason recorded.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Placement:
    location: str
    """The location in deployment.yml (a quantum location for QPU placements)."""
    quantum: bool
    lease_id: str | None = None
    step_token: str | None = None
    """Per-step gateway token handed to the client command (dies with the lease)."""
    gateway_url: str | None = None
    fallback_reason: str | None = None
    """Why the quantum candidates were passed over (None: no fallback happened)."""
    requested: float = 0.0
    """When the placement was asked for: the step's ``submitted`` time (a vQPU wait shows)."""


class NoPlacement(Exception):
    """No candidate location could take the step; the message says why for each."""
