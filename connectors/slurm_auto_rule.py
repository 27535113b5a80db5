"""What a Slurm location does with its nodes at the start of a quantum phase, and with a node
its step has just left.

Pure functions of plain values, so every branch is testable without a cluster
(tests/test_auto_rule.py); :meth:`qflow.connectors.slurm_allocation.SlurmAllocations.decide`
gathers the values (what it measured, and ``squeue`` for pending jobs when
:func:`needs_pending_check` says the answer matters) and applies the decision.

* ``held``: **keep** every node; ``malleable``: **shrink** to the one-node anchor;
* ``auto`` (docs/strategies.md): nothing granted yet -> **shrink**, as malleable; contention
  met (seen earlier in the run, or jobs pending on the partition now) -> **shrink**; the first
  quantum phase, or a mean quantum phase that outlasts ``keep_factor`` times the mean wait for
  a grant -> **release** every node, the anchor too; otherwise -> **keep**.
* between steps (:func:`release_when_idle`): ``auto`` gives back a node no step of the run
  is waiting for, unless its last decision was to keep every node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Decision = Literal["keep", "shrink", "release"]


def needs_pending_check(
    strategy: str, quantum_phases: Sequence[float], grant_waits: Sequence[float], contended: bool
) -> bool:
    """Whether :func:`decide` depends on if other jobs are pending on the partition now (only
    then is ``squeue`` asked)."""
    return strategy == "auto" and bool(grant_waits) and not contended


def decide(
    strategy: str,
    quantum_phases: Sequence[float],
    grant_waits: Sequence[float],
    *,
    contended: bool,
    others_pending: bool,
    keep_factor: float,
) -> Decision:
    """``keep`` every node, ``shrink`` to the anchor, or ``release`` all of them.

    ``strategy``: the location's allocation strategy (``held``, ``malleable`` or ``auto``).
    ``quantum_phases``: the lengths (s) of this run's earlier quantum phases here.
    ``grant_waits``: how long (s) each allocation it was granted waited from ``salloc``.
    ``contended``: contention met earlier in the run (a job pending at an earlier decision, or
    a grant of its own that had to queue). ``others_pending``: jobs pending on the partition
    now (``False`` when not asked, see :func:`needs_pending_check`).
    ``keep_factor``: the location's ``auto_keep_factor``.
    """
    if strategy != "auto":
        return "keep" if strategy == "held" else "shrink"
    if not grant_waits:
        return "shrink"  # nothing granted yet: as malleable
    if contended or others_pending:
        # others want nodes: let them use the rest, and keep one so as not to queue behind
        # them for it at the next step
        return "shrink"
    if not quantum_phases:
        return "release"  # nobody else, grants measured: getting a node back costs a grant
    expected_quantum = sum(quantum_phases) / len(quantum_phases)
    expected_wait = sum(grant_waits) / len(grant_waits)
    if expected_quantum > keep_factor * expected_wait:
        return "release"  # idle nodes would cost more than getting them back
    return "keep"


def release_when_idle(strategy: str, last_decision: Decision | None) -> bool:
    """Whether a node no step of the run waits for is given back at once (the anchor is
    kept). ``auto`` does, as ``per-step`` would, unless its last quantum-phase decision was
    to keep every node (grants are too slow for the phases: nodes are worth keeping);
    ``held`` and ``malleable`` keep what they hold until the next quantum phase."""
    return strategy == "auto" and last_decision != "keep"
