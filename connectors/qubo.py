"""QUBO tasks: the checked problem, its energy and Ising form, and the best measured answer.

Every vendor connector takes the same ``qubo`` task (docs/connectors.md) and scores what its
QPU measured with the QUBO's own energy, so the answer is never worse than the best sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from qflow.connectors.task_errors import TaskRefused
from qflow.qpu_client import QuboResult

MAX_QUBO_VARIABLES = 100_000
MAX_QUBO_TERMS = 100_000
MAX_NUM_READS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Qubo:
    """A checked ``qubo`` task: minimise Σ value·x_i·x_j over x ∈ {0, 1}^n."""

    num_variables: int
    terms: tuple[tuple[int, int, float], ...]
    """(i, j, value) with i <= j; duplicates are summed; i == j: linear."""
    num_reads: int | None = None
    num_sweeps: int | None = None
    seed: int | None = None

    def energy(self, bits: Sequence[int]) -> float:
        return sum(v * bits[i] * bits[j] for i, j, v in self.terms)

    def energies(self) -> Any:
        """numpy vector of the energy of every bitstring k (bit i of k is variable i)."""
        import numpy as np

        index = np.arange(2**self.num_variables, dtype=np.int64)
        bits = [(index >> i) & 1 for i in range(self.num_variables)]
        total = np.zeros(index.shape, dtype=float)
        for i, j, v in self.terms:
            total += v * (bits[i] & bits[j])
        return total

    def ising(self) -> tuple[float, dict[int, float], dict[tuple[int, int], float]]:
        """(offset, h, J) with f(x) = offset + Σ h_i z_i + Σ J_ij z_i z_j, x_i = (1 - z_i) / 2.

        z_i = +1 is the measured bit 0, so a measured bitstring reads directly as x.
        """
        offset = 0.0
        h: dict[int, float] = {}
        coupling: dict[tuple[int, int], float] = {}
        for i, j, v in self.terms:
            if i == j:
                offset += v / 2
                h[i] = h.get(i, 0.0) - v / 2
            else:
                offset += v / 4
                h[i] = h.get(i, 0.0) - v / 4
                h[j] = h.get(j, 0.0) - v / 4
                coupling[(i, j)] = coupling.get((i, j), 0.0) + v / 4
        return offset, h, coupling

    def conflict_edges(self) -> list[tuple[int, int]]:
        return [(i, j) for i, j, v in self.terms if i != j and v != 0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_field(task: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> Any:
    """An optional integer field of a task within [low, high]; ``default`` when absent."""
    value = task.get(key)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise TaskRefused(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def parse_qubo(task: Mapping[str, Any]) -> Qubo:
    """Check a ``qubo`` task (:class:`~qflow.qpu_client.QuboTask`): the one validator of the
    QUBO shape, used by the gateway, the vendor connectors and the emulator. Fields other
    than the QUBO's own (kind, backend, ...) are the caller's to check."""
    n = int_field(task, "num_variables", None, 1, MAX_QUBO_VARIABLES)
    if n is None:
        raise TaskRefused("num_variables is required for kind 'qubo'")
    terms = task.get("qubo")
    if terms is None:
        raise TaskRefused("qubo is required for kind 'qubo': a list of [i, j, value] terms")
    if not isinstance(terms, list):
        raise TaskRefused(f"qubo must be a list of [i, j, value] terms, got {terms!r:.80}")
    if len(terms) > MAX_QUBO_TERMS:
        raise TaskRefused(f"qubo has {len(terms)} terms, more than {MAX_QUBO_TERMS}")
    summed: dict[tuple[int, int], float] = {}
    for k, term in enumerate(terms):
        if not isinstance(term, list | tuple) or len(term) != 3:
            raise TaskRefused(f"qubo[{k}] must be a list [i, j, value], got {term!r}")
        i, j, value = term
        for name, index in (("i", i), ("j", j)):
            if not _is_int(index):
                raise TaskRefused(f"qubo[{k}]: index {name} must be an integer, got {index!r}")
            if not 0 <= index < n:
                raise TaskRefused(
                    f"qubo[{k}]: index {name}={index} is out of range for num_variables={n} "
                    f"(valid: 0 to {n - 1})"
                )
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise TaskRefused(f"qubo[{k}]: value must be a finite number, got {value!r}")
        key = (min(i, j), max(i, j))
        summed[key] = summed.get(key, 0.0) + float(value)
    return Qubo(
        num_variables=n,
        terms=tuple((i, j, v) for (i, j), v in sorted(summed.items())),
        num_reads=int_field(task, "num_reads", None, 1, MAX_NUM_READS),
        num_sweeps=int_field(task, "num_sweeps", None, 1, 1_000_000),
        seed=int_field(task, "seed", None, 0, 2**32 - 1),
    )


def best_of_counts(qubo: Qubo, counts: dict[str, int]) -> tuple[list[int], float, int]:
    """The lowest-energy bitstring among measured ones: (sample, energy, times measured).

    Keys are bitstrings with variable 0 rightmost (Qiskit's order); ties go to the more
    frequent, then the lexicographically smaller one, so the answer is reproducible.
    """
    best: tuple[float, int, str] | None = None
    n = qubo.num_variables
    for key, count in counts.items():
        bits = key.replace(" ", "")[-n:].rjust(n, "0")
        sample = [int(bits[-1 - i]) for i in range(n)]
        candidate = (qubo.energy(sample), -count, bits)
        if best is None or candidate < best:
            best = candidate
    if best is None:
        raise RuntimeError("the backend returned no measurement")
    energy, negcount, bits = best
    return [int(bits[-1 - i]) for i in range(n)], energy, -negcount


def refuse_larger(qubo: Qubo, limit: int, location: str, why: str) -> None:
    """Refuse a QUBO with more than ``limit`` variables; ``why`` says where the limit is from."""
    if qubo.num_variables > limit:
        raise TaskRefused(
            f"QPU {location}: the QUBO has {qubo.num_variables} variables, more than this QPU "
            f"takes ({why})"
        )


def qubo_result(
    qubo: Qubo, counts: dict[str, int], solver: str, num_reads: int, **extra: Any
) -> QuboResult:
    """The result of a ``qubo`` task from measured counts (keys: variable 0 rightmost)."""
    sample, energy, hits = best_of_counts(qubo, counts)
    result: QuboResult = {
        "kind": "qubo",
        "best_sample": sample,
        "best_energy": energy,
        "solver": solver,
        "num_reads": num_reads,
    }
    return cast(QuboResult, {**result, "num_distinct": len(counts), "best_count": hits, **extra})
