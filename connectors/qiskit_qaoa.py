"""QUBO → QAOA circuit: angles from an exact statevector, then the circuit Qiskit runs.

Shared by the ``ibm`` and ``qrmi`` connectors.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

from qflow.connectors.qubo import Qubo

STATEVECTOR_LIMIT = 16
"""Largest QUBO whose QAOA angles are optimised on an exact statevector (2**16 amplitudes)."""


@dataclasses.dataclass(frozen=True)
class QaoaPlan:
    """Angles of a QAOA circuit for one QUBO, on the QUBO's own energy scale."""

    gammas: tuple[float, ...]
    betas: tuple[float, ...]
    expected_energy: float | None
    """Expectation of the QUBO energy for these angles (exact; None if not computed)."""


def _qaoa_statevector(
    qubo: Qubo, energies: Any, gammas: Sequence[float], betas: Sequence[float]
) -> Any:
    """Exact QAOA state: H^n|0>, then per layer exp(-i γ f) and exp(-i β Σ X)."""
    import numpy as np

    n = qubo.num_variables
    state = np.full(2**n, 2 ** (-n / 2), dtype=complex)
    for gamma, beta in zip(gammas, betas, strict=True):
        state = state * np.exp(-1j * gamma * energies)
        c, s = math.cos(beta), -1j * math.sin(beta)
        tensor = state.reshape((2,) * n)
        for axis in range(n):
            a = np.take(tensor, 0, axis=axis)
            b = np.take(tensor, 1, axis=axis)
            tensor = np.stack((c * a + s * b, s * a + c * b), axis=axis)
        state = tensor.reshape(-1)
    return state


def plan_qaoa(qubo: Qubo, reps: int) -> QaoaPlan:
    """Angles for ``reps`` QAOA layers: grid search (1 layer) + Nelder-Mead on the exact
    expectation for small QUBOs; a fixed linear ramp above :data:`STATEVECTOR_LIMIT` variables.

    γ multiplies the QUBO energy itself (the constant offset only adds a global phase), so it
    is scaled by the largest Ising coefficient to stay in a sensible range.
    """
    import numpy as np

    _, h, coupling = qubo.ising()
    scale = max([abs(v) for v in [*h.values(), *coupling.values()]] or [1.0]) or 1.0
    ramp_g = tuple(0.8 * (k + 1) / reps / scale for k in range(reps))
    ramp_b = tuple(0.7 * (1 - k / reps) for k in range(reps))
    if qubo.num_variables > STATEVECTOR_LIMIT:
        return QaoaPlan(ramp_g, ramp_b, None)
    energies = qubo.energies()

    def expectation(params: Sequence[float]) -> float:
        gammas, betas = params[:reps], params[reps:]
        probs = np.abs(_qaoa_statevector(qubo, energies, gammas, betas)) ** 2
        return float(probs @ energies)

    best = (expectation((*ramp_g, *ramp_b)), (*ramp_g, *ramp_b))
    for g, b in itertools.product(np.linspace(0.1, math.pi, 16), np.linspace(0.1, 1.5, 8)):
        params = (*[g / scale * (k + 1) / reps for k in range(reps)], *[b] * reps)
        value = expectation(params)
        if value < best[0]:
            best = (value, params)
    from scipy.optimize import minimize

    refined = minimize(
        expectation, np.array(best[1]), method="Nelder-Mead", options={"maxiter": 150 * reps}
    )
    if refined.fun < best[0]:
        best = (float(refined.fun), tuple(float(x) for x in refined.x))
    params = best[1]
    return QaoaPlan(tuple(params[:reps]), tuple(params[reps:]), best[0])


def qaoa_circuit(qubo: Qubo, plan: QaoaPlan) -> Any:
    """The QAOA circuit (measured) for ``qubo``: RZ/RZZ cost layers, RX mixers."""
    from qiskit import QuantumCircuit

    _, h, coupling = qubo.ising()
    n = qubo.num_variables
    circuit = QuantumCircuit(n, name="qaoa")
    circuit.h(range(n))
    for gamma, beta in zip(plan.gammas, plan.betas, strict=True):
        for (i, j), value in sorted(coupling.items()):
            if value:
                circuit.rzz(2 * gamma * value, i, j)
        for i, value in sorted(h.items()):
            if value:
                circuit.rz(2 * gamma * value, i)
        circuit.rx(2 * beta, range(n))
    circuit.measure_all()
    return circuit


def cost_operator(qubo: Qubo) -> Any:
    """The Ising cost Hamiltonian as a ``SparsePauliOp`` (its eigenvalue on |x> is f(x))."""
    from qiskit.quantum_info import SparsePauliOp

    offset, h, coupling = qubo.ising()
    terms: list[tuple[str, list[int], float]] = [("", [], offset)]
    terms += [("Z", [i], v) for i, v in sorted(h.items()) if v]
    terms += [("ZZ", [i, j], v) for (i, j), v in sorted(coupling.items()) if v]
    return SparsePauliOp.from_sparse_list(terms, num_qubits=qubo.num_variables).simplify()
