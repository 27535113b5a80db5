"""``sampler`` tasks: OpenQASM programs in, measured counts out (Qiskit's SamplerV2).

Shared by the ``ibm`` and ``qrmi`` connectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qflow.connectors.qubo import int_field
from qflow.connectors.task_errors import TaskRefused


def load_circuit(text: Any, index: int) -> Any:
    """An OpenQASM 2 or 3 program as a measured ``QuantumCircuit``."""
    if not isinstance(text, str) or not text.strip():
        raise TaskRefused(f"circuits[{index}] must be an OpenQASM 2 or 3 program (a string)")
    try:
        if "OPENQASM 3" in text:
            from qiskit import qasm3

            circuit = qasm3.loads(text)
        else:
            from qiskit import qasm2

            circuit = qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    except ImportError as exc:
        raise TaskRefused(
            f"circuits[{index}]: OpenQASM 3 needs qiskit-qasm3-import ({exc}). "
            "Fix: pip install qiskit-qasm3-import"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a parse error in the user's program
        raise TaskRefused(f"circuits[{index}] is not valid OpenQASM: {exc}") from None
    if circuit.num_clbits == 0:
        circuit.measure_all()
    return circuit


def parse_sampler(task: Mapping[str, Any], default_shots: int) -> tuple[list[Any], int]:
    circuits = task.get("circuits")
    if not isinstance(circuits, list) or not circuits:
        raise TaskRefused("circuits is required for kind 'sampler': a list of OpenQASM programs")
    shots = int_field(task, "shots", default_shots, 1, 1_000_000)
    return [load_circuit(text, k) for k, text in enumerate(circuits)], shots


def counts_of(pub_result: Any) -> dict[str, int]:
    """Counts of one SamplerV2 pub result, all classical registers joined."""
    data = pub_result.data
    try:
        return dict(pub_result.join_data().get_counts())
    except (AttributeError, ValueError):
        names = list(data.keys()) if hasattr(data, "keys") else []
        if not names:
            raise RuntimeError("the sampler returned no classical data") from None
        return dict(getattr(data, names[0]).get_counts())
