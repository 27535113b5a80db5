"""A qflow task as the QRMI payload that runs it (built in a worker thread).

IBM types get Qiskit primitive payloads: a QUBO's QAOA circuit or OpenQASM circuits,
transpiled for the resource's backend, or a raw primitive passed through; Pasqal types get
a serialised pulser sequence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from qflow.connectors.qiskit_circuits import parse_sampler
from qflow.connectors.qiskit_qaoa import plan_qaoa, qaoa_circuit
from qflow.connectors.qrmi_config import QrmiConfig
from qflow.connectors.qubo import Qubo, parse_qubo, refuse_larger
from qflow.connectors.task_errors import TaskRefused


def task_payload(
    qrmi: Any,
    cfg: QrmiConfig,
    location: str,
    backend: Callable[[], Any],
    task: dict[str, Any],
    kind: str,
) -> tuple[Any, Qubo | None]:
    """(QRMI payload, QUBO if any) for a task; ``backend()`` is the resource's Qiskit
    backend, asked for only by the kinds that transpile."""
    if kind == "qubo":
        qubo = parse_qubo(task)
        qubits = backend().num_qubits
        limit = min(cfg.max_variables, qubits)
        why = f"{cfg.resource} has {qubits} qubits, max_variables is {cfg.max_variables}"
        refuse_larger(qubo, limit, location, f"{limit}: {why}")
        circuit = qaoa_circuit(qubo, plan_qaoa(qubo, cfg.reps))
        return _sampler_payload(qrmi, cfg, backend(), [circuit], cfg.shots, qubo.seed), qubo
    if kind == "sampler":
        circuits, shots = parse_sampler(task, cfg.shots)
        return _sampler_payload(qrmi, cfg, backend(), circuits, shots, None), None
    if kind == "primitive":
        program = task.get("program_id")
        body = task.get("input")
        if not isinstance(program, str) or not isinstance(body, dict | str):
            raise TaskRefused(
                "kind 'primitive' needs program_id (sampler, estimator, ...) and input "
                "(the primitive's parameters, an object)"
            )
        text = body if isinstance(body, str) else json.dumps(body)
        return qrmi.Payload.QiskitPrimitive(input=text, program_id=program), None
    sequence = task.get("sequence")
    shots = task.get("shots", cfg.shots)
    if not isinstance(sequence, str | dict) or not isinstance(shots, int) or shots < 1:
        raise TaskRefused(
            "kind 'pulser' needs sequence (a pulser sequence in its JSON abstract "
            "representation) and shots (a positive integer)"
        )
    text = sequence if isinstance(sequence, str) else json.dumps(sequence)
    return qrmi.Payload.PasqalCloud(sequence=text, job_runs=shots), None


def _sampler_payload(
    qrmi: Any, cfg: QrmiConfig, backend: Any, circuits: list[Any], shots: int, seed: int | None
) -> Any:
    from qiskit import qasm3, transpile

    isa = transpile(
        circuits,
        backend=backend,
        optimization_level=cfg.optimization_level,
        seed_transpiler=seed,
    )
    pubs = [
        [
            qasm3.dumps(
                c,
                disable_constants=True,
                allow_aliasing=True,
                experimental=qasm3.ExperimentalFeatures.SWITCH_CASE_V1,
            ),
            None,
            shots,
        ]
        for c in isa
    ]
    body = {"pubs": pubs, "shots": shots, "options": {}, "version": 2, "support_qiskit": True}
    return qrmi.Payload.QiskitPrimitive(input=json.dumps(body), program_id="sampler")
