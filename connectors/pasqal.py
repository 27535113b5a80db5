"""The ``pasqal`` quantum connector: MIS-shaped QUBOs on neutral atoms (pulser, pasqal-cloud).

A QUBO whose quadratic terms are positive conflict penalties (a maximum-weight independent
set: the shape of the clustering workflow's QUBO) maps onto a Rydberg-blockade register: one
atom per variable, placed so that atoms of conflicting variables are closer than the blockade
radius and all others farther. An adiabatic sweep (global Rabi pulse, detuning from negative
to positive) then prepares low-energy independent sets; every sampled bitstring is scored with
the QUBO's own energy (weights included) and the best one is the answer.

Two modes (``mode`` in deployment.yml):

* ``local``: the sequence is emulated in this process by ``pulser_simulation.QutipEmulator``
  on a pulser device model (``AnalogDevice``, ``DigitalAnalogDevice``). Runs offline; up to
  ``max_atoms`` atoms (2**atoms amplitudes).
* ``cloud``: the sequence is sent as a batch to Pasqal Cloud (``pasqal-cloud``: ``username``,
  ``password`` as a credential reference, ``project_id``; ``device`` a cloud device such as
  FRESNEL, or ``emulator`` such as EMU_MPS). Not testable offline.

Register embedding: a small search for 2-D positions (random restarts of a smooth penalty
minimisation, seeded, so it is reproducible) with every conflict pair at distance <= 1 and
every other pair at >= 1.25 (relative units), then scaled to the device's minimum atom
distance. Graphs that are not such unit-disk graphs in the plane (e.g. a star with 6 or more
leaves) are refused with a message saying so.

Without the SDK (``pip install 'qflow[pasqal]'``) validation and :meth:`start` say which extra
to install.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, cast

from pydantic import Field, model_validator

from qflow.connectors.ibm import (
    BookedTasks,
    BookTask,
    MissingExtra,
    Qubo,
    TaskBook,
    TaskCancelled,
    TaskRefused,
    best_of_counts,
    check_extra,
    import_extra,
    in_worker,
    parse_qubo,
    require_extra,
)
from qflow.quantum import QpuStatus, QuantumConnector, QuantumLocationConfig
from qflow.secrets import SecretReference, redact, resolve_secret

PASQAL_EXTRA = "pasqal"
LOCAL_MODULES = ("pulser", "pulser_simulation")
CLOUD_MODULES = ("pulser", "pasqal_cloud")
LOCAL_DEVICES = ("AnalogDevice", "DigitalAnalogDevice")
EDGE = 1.0
"""Longest conflict edge, in relative units."""
NON_EDGE = 1.25
"""Shortest distance between non-conflicting atoms: the blockade radius lies in between."""
SEARCH_TARGET = 1.6
"""The search aims at this gap (more contrast), and accepts anything above NON_EDGE."""
MIN_GAP = 0.7
"""Shortest distance between any two atoms, relative."""
CLOUD_FINAL = {
    "DONE": "completed",
    "ERROR": "failed",
    "TIMED_OUT": "failed",
    "CANCELED": "cancelled",
    "CANCELLED": "cancelled",
}


class EmbeddingError(TaskRefused):
    """The conflict graph cannot be laid out as atoms (not a unit-disk graph, too large...)."""


@dataclasses.dataclass(frozen=True)
class Embedding:
    coords: tuple[tuple[float, float], ...]
    """Atom positions in µm, centred on the origin; atom i is variable i."""
    blockade_radius: float
    """µm; conflicting atoms are closer, the others farther."""
    omega: float
    """Peak Rabi frequency in rad/µs that gives this blockade radius."""


def layout_graph(
    n: int, edges: Sequence[tuple[int, int]], seed: int = 0, restarts: int = 25
) -> list[tuple[float, float]]:
    """Relative 2-D positions: edges <= EDGE, non-edges >= NON_EDGE, all pairs >= MIN_GAP."""
    import numpy as np
    from scipy.optimize import minimize

    if n == 1:
        return [(0.0, 0.0)]
    pairs = list(itertools.combinations(range(n), 2))
    wanted = {(min(e), max(e)) for e in edges}
    first = np.array([p[0] for p in pairs])
    second = np.array([p[1] for p in pairs])
    is_edge = np.array([p in wanted for p in pairs])

    def distances(flat: Any) -> Any:
        x = flat.reshape(n, 2)
        return np.linalg.norm(x[first] - x[second], axis=1)

    def loss(flat: Any) -> float:
        d = distances(flat)
        return float(
            np.sum(np.maximum(d[is_edge] - EDGE, 0) ** 2)
            + np.sum(np.maximum(SEARCH_TARGET - d[~is_edge], 0) ** 2)
            + np.sum(np.maximum(MIN_GAP - d, 0) ** 2)
        )

    def acceptable(flat: Any) -> bool:
        d = distances(flat)
        return bool(
            np.all(d[is_edge] <= EDGE + 1e-6)
            and np.all(d[~is_edge] >= NON_EDGE)
            and np.all(d >= MIN_GAP - 1e-6)
        )

    rng = np.random.default_rng(seed)
    spread = math.sqrt(n)
    for _ in range(restarts):  # usually the first one succeeds
        result = minimize(loss, rng.uniform(-spread, spread, 2 * n), method="L-BFGS-B")
        if acceptable(result.x):
            x = result.x.reshape(n, 2)
            return [(float(a), float(b)) for a, b in x - x.mean(axis=0)]
    raise EmbeddingError(
        f"the conflict graph ({n} variables, {len(wanted)} conflicts) cannot be laid out as "
        "atoms: no placement found with every conflicting pair inside the blockade radius and "
        "every other pair outside it (it is not a unit-disk graph in the plane, e.g. a star "
        "with 6 or more leaves). Fix: solve it on another location"
    )


def embed(qubo: Qubo, device: Any, seed: int = 0) -> Embedding:
    """Atom positions and Rabi frequency for ``qubo``'s conflict graph on ``device``."""
    import numpy as np

    n = qubo.num_variables
    edges = qubo.conflict_edges()
    rel = np.array(layout_graph(n, edges, seed=seed))
    pairs = list(itertools.combinations(range(n), 2))
    wanted = set(edges)
    dist = {p: float(np.linalg.norm(rel[p[0]] - rel[p[1]])) for p in pairs}
    longest_edge = max([dist[p] for p in pairs if p in wanted], default=EDGE)
    shortest_other = min([dist[p] for p in pairs if p not in wanted], default=2 * NON_EDGE)
    shortest = min(dist.values(), default=EDGE)
    radius_rel = math.sqrt(longest_edge * shortest_other)  # the middle, geometrically
    channel = device.channels["rydberg_global"]
    min_distance = float(device.min_atom_distance or 4.0)
    scale = min_distance / shortest
    max_amp = channel.max_amp or 4 * math.pi
    # blockade radius R = (C6 / Ω)^(1/6): a larger register needs a weaker Ω, never above max
    omega = device.interaction_coeff / (scale * radius_rel) ** 6
    if omega > 0.95 * max_amp:
        omega = 0.95 * max_amp
        scale = device.rydberg_blockade_radius(omega) / radius_rel
    coords = rel * scale
    reach = float(np.linalg.norm(coords, axis=1).max()) if n else 0.0
    limit = device.max_radial_distance
    if limit is not None and reach > limit:
        raise EmbeddingError(
            f"the atom layout needs a radius of {reach:.1f} µm, {device.name} allows {limit} µm"
        )
    return Embedding(
        coords=tuple((float(a), float(b)) for a, b in coords),
        blockade_radius=scale * radius_rel,
        omega=float(omega),
    )


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


def check_mis_shape(qubo: Qubo) -> None:
    negative = [(i, j) for i, j, v in qubo.terms if i != j and v < 0]
    if negative:
        i, j = negative[0]
        raise TaskRefused(
            f"the QUBO is not MIS-shaped: quadratic term ({i}, {j}) is negative; this QPU takes "
            "QUBOs whose quadratic terms are positive conflict penalties. Fix: solve it on "
            "another location"
        )


class PasqalConfig(QuantumLocationConfig):
    mode: Literal["local", "cloud"] = Field(
        default="local",
        description="local: pulser's QutipEmulator in this process (offline); cloud: Pasqal "
        "Cloud through pasqal-cloud (needs username, password, project_id).",
    )
    device: str = Field(
        default="AnalogDevice",
        description="local: a pulser device model (AnalogDevice, DigitalAnalogDevice); cloud: "
        "the Pasqal Cloud device whose specs the register must satisfy (e.g. FRESNEL).",
    )
    emulator: Literal["EMU_FREE", "EMU_TN", "EMU_MPS", "EMU_FRESNEL"] | None = Field(
        default=None,
        description="cloud mode: run on this Pasqal Cloud emulator instead of the QPU.",
    )
    shots: int = Field(default=200, ge=1, le=5000, description="Samples per task.")
    duration: int = Field(
        default=4000, ge=500, le=10_000, description="Length of the adiabatic sweep in ns."
    )
    max_atoms: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Largest QUBO accepted (one atom per variable); local emulation holds "
        "2**atoms amplitudes, so keep it small there.",
    )
    username: str | None = Field(default=None, description="cloud mode: Pasqal Cloud username.")
    password: SecretReference | None = Field(
        default=None,
        description="cloud mode: Pasqal Cloud password, as a reference: ${env:NAME} or "
        "${file:PATH}.",
    )
    project_id: str | None = Field(default=None, description="cloud mode: Pasqal Cloud project.")
    poll_interval: float = Field(
        default=2.0, gt=0, le=60, description="cloud mode: seconds between batch status polls."
    )

    @model_validator(mode="after")
    def _check(self) -> PasqalConfig:
        require_extra(
            "pasqal", PASQAL_EXTRA, LOCAL_MODULES if self.mode == "local" else CLOUD_MODULES
        )
        if self.mode == "local" and self.device not in LOCAL_DEVICES:
            raise ValueError(
                f"unknown local device {self.device!r}. Fix: use one of {', '.join(LOCAL_DEVICES)}"
            )
        if self.mode == "cloud":
            missing = [k for k in ("username", "password", "project_id") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"mode cloud needs {', '.join(missing)}. Fix: add e.g. username: me@lab.org, "
                    "password: ${env:PASQAL_PASSWORD}, project_id: <project id>"
                )
        return self


class PasqalConnector(BookedTasks, QuantumConnector):
    """Neutral-atom QPU (Pasqal): pulser emulation in this process, or Pasqal Cloud."""

    Config = PasqalConfig
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo",)

    def __init__(self, location: str, config: QuantumLocationConfig) -> None:
        super().__init__(location, config)
        self.cfg = cast(PasqalConfig, config)
        self.device: Any = None
        self._client: Any = None
        self._password = ""
        self.book = TaskBook(f"pasqal-{location}", self._scrub)

    def _scrub(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._password, "***") if self._password else text

    async def start(self) -> None:
        if self.device is not None:
            return
        modules = LOCAL_MODULES if self.cfg.mode == "local" else CLOUD_MODULES
        check_extra("pasqal", PASQAL_EXTRA, modules)
        if self.cfg.mode == "local":
            devices = import_extra("pulser.devices", "pasqal", PASQAL_EXTRA)
            self.device = getattr(devices, self.cfg.device)
            import_extra("pulser_simulation", "pasqal", PASQAL_EXTRA)
            return
        assert self.cfg.password is not None
        self._password = resolve_secret(self.cfg.password)
        try:
            self._client, self.device = await in_worker(self._open_cloud)
        except MissingExtra:
            raise
        except Exception as exc:
            raise RuntimeError(
                self._scrub(
                    f"QPU {self.location}: cannot open Pasqal Cloud project "
                    f"{self.cfg.project_id}: {type(exc).__name__}: {exc}"
                )
            ) from None

    def _open_cloud(self) -> tuple[Any, Any]:
        client_module = import_extra("pasqal_cloud.pasqal_cloud_client", "pasqal", PASQAL_EXTRA)
        client = client_module.PasqalCloudClient(
            username=self.cfg.username, password=self._password, project_id=self.cfg.project_id
        )
        from pulser.json.abstract_repr.deserializer import deserialize_device

        specs = client.get_device_specs_dict()
        if self.cfg.device not in specs:
            raise ValueError(
                f"device {self.cfg.device!r} is not offered (available: {', '.join(specs)})"
            )
        return client, deserialize_device(specs[self.cfg.device])

    async def stop(self) -> None:
        await self.book.close()

    # -- execution (worker thread) -------------------------------------------------------------
    def _run_qubo(self, task: BookTask, qubo: Qubo, embedding: Embedding) -> dict[str, Any]:
        sequence = build_sequence(embedding, self.device, self.cfg.duration)
        task.note(
            f"{qubo.num_variables} atoms on {self.device.name}: blockade radius "
            f"{embedding.blockade_radius:.2f} µm, Ω {embedding.omega:.3f} rad/µs, sweep "
            f"{self.cfg.duration} ns"
        )
        task.checkpoint()
        shots = self.cfg.shots
        if self.cfg.mode == "local":
            counts = self._emulate(task, sequence, shots, qubo.seed)
        else:
            counts = self._cloud(task, sequence, shots)
        # pulser's bitstrings have atom 0 leftmost; best_of_counts wants variable 0 rightmost
        reversed_counts = {key[::-1]: int(c) for key, c in counts.items()}
        sample, energy, hits = best_of_counts(qubo, reversed_counts)
        return {
            "kind": "qubo",
            "best_sample": sample,
            "best_energy": energy,
            "solver": f"pasqal:{self.device.name}/adiabatic"
            + ("" if self.cfg.mode == "local" else f"@{self.cfg.emulator or 'qpu'}"),
            "num_reads": shots,
            "num_distinct": len(counts),
            "best_count": hits,
            "atoms": [list(c) for c in embedding.coords],
            "blockade_radius": embedding.blockade_radius,
        }

    def _emulate(self, task: BookTask, sequence: Any, shots: int, seed: int | None) -> Any:
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

    def _cloud(self, task: BookTask, sequence: Any, shots: int) -> dict[str, int]:
        """Submit a one-job batch and wait for it (polling; a stop cancels the batch)."""
        emulator = None
        if self.cfg.emulator:
            from pasqal_cloud.device import EmulatorType

            emulator = EmulatorType(self.cfg.emulator)
        batch = self._client.create_batch(
            serialized_sequence=sequence.to_abstract_repr(),
            jobs=[{"runs": shots}],
            emulator=emulator,
            wait=False,
        )
        batch_id = batch.id
        task.note(f"batch {batch_id} submitted ({shots} runs)")
        task.on_cancel = lambda: self._client.cancel_batch(batch_id)
        while True:
            batch = self._client.get_batch(batch_id)
            state = CLOUD_FINAL.get(str(batch.status).upper())
            if state is not None:
                break
            if task.cancel_event.is_set():
                raise TaskCancelled
            time.sleep(self.cfg.poll_interval)
        task.on_cancel = None
        if state != "completed":
            raise RuntimeError(f"Pasqal Cloud batch {batch_id} ended {batch.status}")
        job = batch.ordered_jobs[0]
        return {str(k): int(v) for k, v in (job.result or {}).items()}

    # -- the QuantumConnector contract ---------------------------------------------------------
    async def task_start(self, task: dict[str, Any], idempotency_key: str) -> str:
        if self.device is None:
            raise RuntimeError(f"QPU {self.location}: connector used before start()")
        existing = self.book.find(task, idempotency_key)
        if existing is not None:
            return existing.id
        kind = task.get("kind", "qubo")
        if kind != "qubo":
            raise TaskRefused(
                f"QPU {self.location}: task kind {kind!r} is not supported (supported: qubo)"
            )
        qubo = parse_qubo(task)
        limit = min(self.cfg.max_atoms, self.device.max_atom_num or self.cfg.max_atoms)
        if qubo.num_variables > limit:
            raise TaskRefused(
                f"QPU {self.location}: the QUBO has {qubo.num_variables} variables, more than "
                f"this QPU takes ({limit} atoms)"
            )
        check_mis_shape(qubo)
        # the layout search takes up to a few seconds for graphs that cannot be embedded:
        # off the event loop, and before a task exists, so such a QUBO is refused outright
        try:
            embedding = await in_worker(embed, qubo, self.device, qubo.seed or 0)
        except EmbeddingError as exc:
            raise EmbeddingError(f"QPU {self.location}: {exc}") from None
        return self.book.submit(
            task, idempotency_key, kind, lambda t: self._run_qubo(t, qubo, embedding)
        ).id

    async def status(self) -> QpuStatus:
        if self.device is None:
            raise RuntimeError(f"QPU {self.location}: connector used before start()")
        running, pending = self.book.counts()
        where = "emulated locally (QutipEmulator)" if self.cfg.mode == "local" else "Pasqal Cloud"
        return QpuStatus(
            online=True,
            running=running,
            pending=pending,
            detail=f"{self.device.name}: {where}",
        )

    async def target(self) -> dict[str, Any]:
        if self.device is None:
            raise RuntimeError(f"QPU {self.location}: connector used before start()")
        d = self.device
        return {
            "device": d.name,
            "mode": self.cfg.mode,
            "max_atoms": min(self.cfg.max_atoms, d.max_atom_num or self.cfg.max_atoms),
            "min_atom_distance": d.min_atom_distance,
            "max_radial_distance": d.max_radial_distance,
            "channels": sorted(d.channels),
            "kinds": list(self.task_kinds),
        }

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "mode": self.cfg.mode,
            "device": self.cfg.device,
            "shots": self.cfg.shots,
        }
