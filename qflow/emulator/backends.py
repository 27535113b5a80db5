"""The kinds of QPU the emulator can pretend to be: each is a latency per task."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Backend:
    """A latency model: the fixed time a task costs on this kind of QPU before solving."""

    name: str
    latency_s: float
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("superconducting", 0.2, "superconducting-like: sub-second per task"),
        Backend("neutral-atom", 120.0, "neutral-atom-like: minutes per task"),
    )
}
DEFAULT_BACKEND = "superconducting"
