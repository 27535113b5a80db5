"""The pulser sequence that prepares low-energy independent sets: an adiabatic sweep."""

from __future__ import annotations

import math
from typing import Any

from qflow.connectors.pasqal_embedding import Embedding


def build_sequence(embedding: Embedding, device: Any, duration: int) -> Any:
    """The adiabatic MIS sequence: Ω 0 → Ω_max → 0, detuning -1.5 Ω_max → +Ω_max."""
    import numpy as np
    from pulser import Pulse, Sequence
    from pulser.register import Register, RegisterLayout
    from pulser.waveforms import InterpolatedWaveform

    n = len(embedding.coords)
    coords = np.array(embedding.coords)
    ids = [f"q{i}" for i in range(n)]
    if getattr(device, "requires_layout", False):
        # The layout gets spare traps on a ring outside the atoms (devices fill at most a
        # fraction of a layout); the register uses only the traps at the atoms' positions.
        filling = getattr(device, "max_layout_filling", 0.5) or 0.5
        spare = max(0, math.ceil(n / filling) - n)
        ring = float(np.linalg.norm(coords, axis=1).max()) + float(device.min_atom_distance)
        extra = [
            (ring * math.cos(2 * math.pi * k / spare), ring * math.sin(2 * math.pi * k / spare))
            for k in range(spare)
        ]
        layout = RegisterLayout(np.vstack([coords, extra]) if extra else coords)
        traps = layout.get_traps_from_coordinates(*coords)
        register = layout.define_register(*traps, qubit_ids=ids)
    else:
        register = Register(dict(zip(ids, coords, strict=True)))
    sequence = Sequence(register, device)
    sequence.declare_channel("ising", "rydberg_global")
    omega = embedding.omega
    detuning_limit = sequence.declared_channels["ising"].max_abs_detuning or 10 * omega
    start, end = max(-1.5 * omega, -detuning_limit), min(omega, detuning_limit)
    sequence.add(
        Pulse(
            InterpolatedWaveform(duration, [1e-9, omega, 1e-9]),
            InterpolatedWaveform(duration, [start, 0.0, end]),
            0.0,
        ),
        "ising",
    )
    return sequence
