"""The validated deployment: locations, bindings from step paths to candidates, policy.

Lookups answer which binding, candidates, strategy, placement rule and run-time hint apply
to a step path; :meth:`Deployment.check_steps` checks the bindings against a workflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qflow.connector import LocationConfig
from qflow.deployment.suggestions import guess, steps_listing

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = ("version", "locations", "bindings", "policy")
DEFAULT_BINDING = "default"
EMBEDDED_SOURCE = "<embedded local.yml>"

Allocation = Literal["per-step", "held", "malleable", "auto"]
SUPPORTED_ALLOCATIONS: tuple[str, ...] = ("per-step", "held", "malleable", "auto")
PlacementRule = Literal["first", "earliest-finish"]
PLACEMENT_RULES: tuple[str, ...] = ("first", "earliest-finish")


class DeploymentError(Exception):
    """A deployment that cannot be used; ``messages`` holds every problem found, in file order."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class UnboundStepError(LookupError):
    """A step that no binding (nor ``default``) maps to a location."""


class Policy(BaseModel):
    """How steps get their resources (docs/strategies.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    allocation: Allocation = Field(
        default="per-step",
        description="per-step: every step execution gets its own allocation, released when "
        "it ends; held: a location's nodes are allocated once for the whole run; malleable: a "
        "one-node allocation is kept, the other nodes are released during quantum phases; auto: "
        "one-node allocations given back as soon as no step waits for them, the first one kept "
        "or not at each quantum phase from what the run measured (contention, waits for "
        "grants). Applies to Slurm locations (a location's `allocation` key overrides it).",
    )

    placement: PlacementRule = Field(
        default="first",
        description="How a step's location is chosen among its binding's candidates. first: "
        "the quantum candidates in order (waiting for them up to their max_wait), then the "
        "classical ones in order, waiting for whichever frees first; earliest-finish: the "
        "candidate expected to finish the step first, from measured run and queue times "
        "(docs/placement.md). A binding's or its first location's `placement` overrides it.",
    )
    history: str | None = Field(
        default=None,
        description="File where run times measured by earlier runs are kept for "
        "earliest-finish placement (per site: every run of this user adds to it); `none` "
        "keeps none. Unset: $XDG_STATE_HOME/qflow/history.json (~/.local/state/qflow).",
    )

    @field_validator("allocation")
    @classmethod
    def _implemented(cls, value: str) -> str:
        if value not in SUPPORTED_ALLOCATIONS:
            raise ValueError(
                f"allocation {value!r} is not supported yet (supported: "
                f"{', '.join(SUPPORTED_ALLOCATIONS)}). Fix: set allocation: per-step"
            )
        return value


@dataclasses.dataclass(frozen=True)
class Deployment:
    """A validated deployment: locations in file order, bindings, policy."""

    source: str
    """Where it came from, as shown in messages (a file name or ``<embedded local.yml>``)."""
    version: int
    locations: dict[str, LocationConfig]
    bindings: dict[str, list[str]]
    """Binding key (``default`` or an absolute step path) -> ordered candidate locations."""
    policy: Policy = dataclasses.field(default_factory=Policy)
    binding_allocations: dict[str, str] = dataclasses.field(default_factory=dict)
    """Binding key -> the allocation strategy that binding sets for its steps."""
    binding_placements: dict[str, str] = dataclasses.field(default_factory=dict)
    """Binding key -> the placement rule that binding sets for its steps."""
    binding_hints: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Binding key -> location -> the run time its steps are expected to take there."""
    binding_lines: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)
    """1-based line of each binding key, for messages about bindings."""
    bindings_line: int = dataclasses.field(default=1, repr=False)
    """1-based line of the ``bindings:`` key (1 when absent), for messages about steps."""

    def candidates(self, step_path: str) -> list[str]:
        """The candidate locations of the binding of ``step_path`` (:meth:`binding_of`)."""
        return list(self.bindings[self.binding_of(step_path)])

    def allocation_for(self, step_path: str) -> str | None:
        """The strategy the binding of ``step_path`` sets; None: the location's or policy's."""
        return self.binding_allocations.get(self.binding_of(step_path))

    def placement_for(self, step_path: str) -> str:
        """The placement rule of ``step_path``: its binding's, else its first candidate
        location's, else the policy's."""
        key = self.binding_of(step_path)
        if key in self.binding_placements:
            return self.binding_placements[key]
        first = self.locations[self.bindings[key][0]]
        return getattr(first, "placement", None) or self.policy.placement

    def expected_seconds(self, step_path: str, location: str) -> float | None:
        """The ``expected_seconds`` hint of the binding of ``step_path`` for ``location``."""
        return self.binding_hints.get(self.binding_of(step_path), {}).get(location)

    def binding_of(self, step_path: str) -> str:
        """The most specific binding of ``step_path``: exact, nearest ancestor, else default."""
        if not step_path.startswith("/"):
            raise ValueError(f"step path must be absolute (start with '/'), got {step_path!r}")
        path = step_path.rstrip("/") or "/"
        while path not in ("", "/"):
            if path in self.bindings:
                return path
            path = path.rsplit("/", 1)[0]
        if DEFAULT_BINDING in self.bindings:
            return DEFAULT_BINDING
        raise UnboundStepError(self._unbound(step_path))

    def _unbound(self, step_path: str) -> str:
        return (
            f"{self.source}:{self.bindings_line}: bindings: step {step_path} is not bound to any "
            f"location. Fix: add a binding for {step_path} or a default"
        )

    def check_steps(self, step_paths: Iterable[str]) -> list[str]:
        """Problems of this deployment against a workflow's steps, in file order; [] if none.

        ``step_paths`` are step paths (``/loop``, ``/loop/annealing``). Only leaves (paths no
        other path descends from) need a location: a sub-workflow step runs no command of
        its own. A binding key that is no step path (nor an ancestor of one) is an error too:
        it is usually a typo, and the step it meant would silently run elsewhere. The embedded
        default is exempt from that, since it serves every workflow.
        """
        steps = list(dict.fromkeys(step_paths))
        known = _with_ancestors(steps)
        problems: list[tuple[int, str]] = []
        if DEFAULT_BINDING not in self.bindings:
            parents = {path.rsplit("/", 1)[0] for path in known}
            for step in (s for s in steps if s.rstrip("/") not in parents):
                try:
                    self.candidates(step)
                except UnboundStepError:
                    problems.append((self.bindings_line, self._unbound(step)))
        if self.source != EMBEDDED_SOURCE:
            for key in (k for k in self.bindings if k != DEFAULT_BINDING and k not in known):
                line = self.binding_lines.get(key, self.bindings_line)
                fix = guess(key, known, "remove the binding or bind an existing step path")
                problems.append(
                    (
                        line,
                        f"{self.source}:{line}: bindings.{key}: the workflow has no step {key}. "
                        f"Fix: {fix}{steps_listing(known)}",
                    )
                )
        problems.sort(key=lambda p: p[0])
        return [message for _, message in problems]


def _with_ancestors(steps: list[str]) -> dict[str, None]:
    """Every step path and every ancestor path of one, in order."""
    known: dict[str, None] = {}
    for step in steps:
        parts = step.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            known["/" + "/".join(parts[:i])] = None
    return known
