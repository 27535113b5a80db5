"""A QRMI task result (text) as a qflow result: counts decoded, a QUBO's best answer."""

from __future__ import annotations

import json
from typing import Any

from qflow.connectors.qiskit_circuits import counts_of
from qflow.connectors.qubo import Qubo, qubo_result
from qflow.quantum import TaskResult


def decode_result(kind: str, text: str, qubo: Qubo | None, where: str, reps: int) -> TaskResult:
    """The result of a ``kind`` task from QRMI's text; ``where`` names the resource."""
    if kind in ("qubo", "sampler"):
        try:
            from qiskit_ibm_runtime.decoders.result_decoder import ResultDecoder
        except ModuleNotFoundError:  # qiskit-ibm-runtime < 0.46
            from qiskit_ibm_runtime.utils.result_decoder import ResultDecoder
        decoded = ResultDecoder.decode(text)
        counts = [counts_of(pub) for pub in decoded]
        if kind == "sampler":
            return {"kind": "sampler", "counts": counts, "solver": f"{where}/sampler"}
        assert qubo is not None
        return qubo_result(qubo, counts[0], f"{where}/qaoa", sum(counts[0].values()), reps=reps)
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return {"kind": kind, "result": body, "solver": where}
