"""What placement decides: where one step execution runs, why, and what it holds there."""

from __future__ import annotations

import dataclasses

HOST = "(this host)"
"""Where a QPU step's client command runs when its location names no ``run_on``."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """A virtual QPU held for one step execution."""

    key: str
    """Chosen by qflow (and journalled) before the lease was asked for; the lease's id."""
    token: str
    """Per-step gateway token handed to the client command (dies with the lease)."""
    gateway_url: str
    """Where the client command reaches the gateway."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """One step execution's location, and what is held for it until it is released."""

    number: int
    """Unique in the run (the placer's bookkeeping)."""
    step: str
    iteration: int | None
    location: str
    """The deployment location (a quantum location for QPU placements)."""
    quantum: bool
    """True: the step's quantum implementation runs, on ``lease``."""
    requested: float
    """When the placement was asked for: the step's ``submitted`` time (waits show)."""
    slot: str | None = None
    """The classical location whose slot is held (the location itself, or a QPU step's
    ``run_on``); None for a client command on this host."""
    lease: Lease | None = None
    fallback_reason: str | None = None
    """Why quantum candidates were passed over (None: no fallback)."""
    reason: str = ""
    """Why this location, in words (the rule and what it saw)."""
    estimates: dict[str, float] | None = None
    """Earliest finish: expected seconds from the request to the end, per candidate."""

    @property
    def runs_on(self) -> str:
        """The location whose connector runs the command (:data:`HOST` for a QPU client
        command without ``run_on``)."""
        if not self.quantum:
            return self.location
        return self.slot or HOST


class NoPlacement(Exception):
    """No candidate location can take the step; the message says why for each."""
