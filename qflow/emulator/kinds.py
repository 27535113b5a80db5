"""Task kinds: each validates a task body and returns the solver the QPU runs.

A new kind is one function registered with :func:`task_kind`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qflow.emulator.errors import BadTask

Interrupted = Callable[[], bool]
Solver = Callable[[Interrupted], dict[str, Any]]
"""Runs in a worker thread; polls ``Interrupted`` to give up early once the task is cancelled."""
KindHandler = Callable[[dict[str, Any], str], Solver]
"""Validates a task's parameters (raises :class:`BadTask`) and returns its solver.

Gets the body without ``kind`` and ``backend``, and the backend name (for result labels).
"""

KINDS: dict[str, KindHandler] = {}


def task_kind(name: str) -> Callable[[KindHandler], KindHandler]:
    """Register a task kind: the one function a new kind needs."""

    def register(handler: KindHandler) -> KindHandler:
        KINDS[name] = handler
        return handler

    return register


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_field(
    params: dict[str, Any], key: str, default: int | None, low: int, high: int
) -> int | None:
    """An optional integer parameter within [low, high]; ``default`` when absent or null."""
    value = params.get(key)
    if value is None:
        return default
    if not is_int(value) or not low <= value <= high:
        raise BadTask(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def _no_unknown(params: dict[str, Any], allowed: set[str], kind: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadTask(
            f"unknown field(s) for kind {kind!r}: {', '.join(unknown)} "
            f"(allowed: kind, backend, {', '.join(sorted(allowed))})"
        )


def _qubo_terms(terms: Any, n: int) -> list[tuple[int, int, float]]:
    """``[[i, j, value], ...]`` checked: integer indices in [0, n), finite values."""
    if not isinstance(terms, list):
        raise BadTask("qubo must be a list of [i, j, value] terms")
    checked = []
    for k, term in enumerate(terms):
        if not isinstance(term, list | tuple) or len(term) != 3:
            raise BadTask(f"qubo[{k}] must be a list [i, j, value], got {term!r}")
        i, j, value = term
        for name, index in (("i", i), ("j", j)):
            if not is_int(index):
                raise BadTask(f"qubo[{k}]: index {name} must be an integer, got {index!r}")
            if not 0 <= index < n:
                raise BadTask(
                    f"qubo[{k}]: index {name}={index} is out of range for num_variables={n} "
                    f"(valid: 0 to {n - 1})"
                )
        if not _is_number(value):
            raise BadTask(f"qubo[{k}]: value must be a finite number, got {value!r}")
        checked.append((i, j, float(value)))
    return checked


@task_kind("qubo")
def qubo_task(params: dict[str, Any], backend: str) -> Solver:
    """A QUBO as ``[i, j, value]`` terms (i == j: linear), minimised by simulated annealing."""
    _no_unknown(params, {"qubo", "num_variables", "num_reads", "num_sweeps", "seed"}, "qubo")
    if params.get("num_variables") is None:
        raise BadTask("num_variables is required for kind 'qubo'")
    n = _int_field(params, "num_variables", None, 1, 100_000)
    reads = _int_field(params, "num_reads", 100, 1, 10_000)
    sweeps = _int_field(params, "num_sweeps", 1000, 1, 1_000_000)
    seed = _int_field(params, "seed", None, 0, 2**32 - 1)
    if "qubo" not in params:
        raise BadTask("qubo is required for kind 'qubo': a list of [i, j, value] terms")
    terms = _qubo_terms(params["qubo"], n)  # type: ignore[arg-type]

    def solve(interrupted: Interrupted) -> dict[str, Any]:
        import dimod
        from dwave.samplers import SimulatedAnnealingSampler

        bqm = dimod.BinaryQuadraticModel(n, dimod.BINARY)  # every variable, even unused ones
        bqm.add_linear_from((i, v) for i, j, v in terms if i == j)
        bqm.add_quadratic_from((i, j, v) for i, j, v in terms if i != j)
        sampleset = SimulatedAnnealingSampler().sample(
            bqm, num_reads=reads, num_sweeps=sweeps, seed=seed, interrupt_function=interrupted
        )
        best = sampleset.first
        return {
            "kind": "qubo",
            "best_sample": [int(best.sample[i]) for i in range(n)],  # type: ignore[arg-type]
            "best_energy": float(best.energy),
            "num_reads": len(sampleset),
            "solver": f"emulator:{backend}/simulated-annealing",
        }

    return solve
