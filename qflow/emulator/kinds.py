"""Task kinds: each validates a task body and returns the solver the QPU runs.

A new kind is one function registered with :func:`task_kind`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qflow.connectors.qubo import parse_qubo
from qflow.connectors.task_errors import TaskRefused
from qflow.emulator.errors import BadTask
from qflow.qpu_client import QuboResult

Interrupted = Callable[[], bool]
Solver = Callable[[Interrupted], Mapping[str, Any]]
"""Runs in a worker thread; polls ``Interrupted`` to give up early once the task is cancelled."""
KindHandler = Callable[[dict[str, Any], str], Solver]
"""Validates a task's parameters (raises :class:`BadTask`) and returns its solver.

Gets the body without ``kind`` and ``backend``, and the backend name (for result labels).
"""

KINDS: dict[str, KindHandler] = {}

DEFAULT_READS = 100
DEFAULT_SWEEPS = 1000


def task_kind(name: str) -> Callable[[KindHandler], KindHandler]:
    """Register a task kind: the one function a new kind needs."""

    def register(handler: KindHandler) -> KindHandler:
        KINDS[name] = handler
        return handler

    return register


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_unknown(params: dict[str, Any], allowed: set[str], kind: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadTask(
            f"unknown field(s) for kind {kind!r}: {', '.join(unknown)} "
            f"(allowed: kind, backend, {', '.join(sorted(allowed))})"
        )


@task_kind("qubo")
def qubo_task(params: dict[str, Any], backend: str) -> Solver:
    """A QUBO as ``[i, j, value]`` terms (i == j: linear), minimised by simulated annealing."""
    _no_unknown(params, {"qubo", "num_variables", "num_reads", "num_sweeps", "seed"}, "qubo")
    try:
        qubo = parse_qubo(params)
    except TaskRefused as exc:
        raise BadTask(str(exc)) from None
    n, terms = qubo.num_variables, qubo.terms
    reads = qubo.num_reads or DEFAULT_READS
    sweeps = qubo.num_sweeps or DEFAULT_SWEEPS

    def solve(interrupted: Interrupted) -> QuboResult:
        import dimod
        from dwave.samplers import SimulatedAnnealingSampler

        bqm = dimod.BinaryQuadraticModel(n, dimod.BINARY)  # every variable, even unused ones
        bqm.add_linear_from((i, v) for i, j, v in terms if i == j)
        bqm.add_quadratic_from((i, j, v) for i, j, v in terms if i != j)
        sampleset = SimulatedAnnealingSampler().sample(
            bqm, num_reads=reads, num_sweeps=sweeps, seed=qubo.seed, interrupt_function=interrupted
        )
        best = sampleset.first
        return {
            "kind": "qubo",
            "best_sample": [int(best.sample[i]) for i in range(n)],
            "best_energy": float(best.energy),
            "num_reads": len(sampleset),
            "solver": f"emulator:{backend}/simulated-annealing",
        }

    return solve
