"""Running a pulser sequence and counting bitstrings: emulated here, or on Pasqal Cloud.

Both run in a worker thread (a task of the connector's task book) and set the task's QPU
time where it is known.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from qflow.connectors.task_book import BookTask
from qflow.connectors.task_errors import TaskCancelled

CLOUD_FINAL = {
    "DONE": "completed",
    "ERROR": "failed",
    "TIMED_OUT": "failed",
    "CANCELED": "cancelled",
    "CANCELLED": "cancelled",
}


def emulate(task: BookTask, sequence: Any, shots: int, seed: int | None) -> Any:
    """Counts of ``shots`` samples of the sequence emulated by pulser's QutipEmulator."""
    import numpy as np
    from pulser_simulation import QutipEmulator

    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qutip/pulser deprecation chatter
        emulator = QutipEmulator.from_sequence(sequence)
        results = emulator.run()
        # pulser samples with numpy's global generator: seed it for this call only
        saved = np.random.get_state()
        try:
            if seed is not None:
                np.random.seed(seed)
            counts = results.sample_final_state(N_samples=shots)
        finally:
            np.random.set_state(saved)
        order = list(results[-1].atom_order)
    if order != [f"q{i}" for i in range(len(order))]:
        raise RuntimeError(f"unexpected atom order in pulser's result: {order}")
    task.qpu_seconds = time.perf_counter() - began
    return counts


def run_in_cloud(
    client: Any,
    task: BookTask,
    sequence: Any,
    shots: int,
    emulator_name: str | None,
    poll_interval: float,
) -> dict[str, int]:
    """Submit a one-job batch and wait for it (polling; a stop cancels the batch)."""
    emulator = None
    if emulator_name:
        from pasqal_cloud.device import EmulatorType

        emulator = EmulatorType(emulator_name)
    batch = client.create_batch(
        serialized_sequence=sequence.to_abstract_repr(),
        jobs=[{"runs": shots}],
        emulator=emulator,
        wait=False,
    )
    batch_id = batch.id
    task.note(f"batch {batch_id} submitted ({shots} runs)")
    task.on_cancel = lambda: client.cancel_batch(batch_id)
    while True:
        batch = client.get_batch(batch_id)
        state = CLOUD_FINAL.get(str(batch.status).upper())
        if state is not None:
            break
        if task.cancel_event.is_set():
            raise TaskCancelled
        time.sleep(poll_interval)
    task.on_cancel = None
    if state != "completed":
        raise RuntimeError(f"Pasqal Cloud batch {batch_id} ended {batch.status}")
    job = batch.ordered_jobs[0]
    return {str(k): int(v) for k, v in (job.result or {}).items()}
