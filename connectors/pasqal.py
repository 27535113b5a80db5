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

The register embedding is :mod:`~qflow.connectors.pasqal_embedding`'s (graphs that are not
unit-disk graphs in the plane are refused with a message saying so), the sweep
:mod:`~qflow.connectors.pasqal_sequence`'s, and both modes run it in
:mod:`~qflow.connectors.pasqal_runs`.

Without the SDK (``pip install 'qflow[pasqal]'``) validation and :meth:`start` say which extra
to install.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from qflow.connectors.pasqal_embedding import Embedding, EmbeddingError, check_mis_shape, embed
from qflow.connectors.pasqal_runs import emulate, run_in_cloud
from qflow.connectors.pasqal_sequence import build_sequence
from qflow.connectors.qubo import Qubo, parse_qubo, qubo_result, refuse_larger
from qflow.connectors.sdk_extras import MissingExtra, check_extra, import_extra, require_extra
from qflow.connectors.sdk_threads import in_worker
from qflow.connectors.task_book import BookedTasks, BookTask, TaskBook
from qflow.connectors.task_errors import TaskRefused
from qflow.qpu_client import QuboResult
from qflow.quantum import QpuStatus, QuantumConnector, QuantumLocationConfig, TaskBody
from qflow.secrets import SecretReference, redact, resolve_secret

PASQAL_EXTRA = "pasqal"
LOCAL_MODULES = ("pulser", "pulser_simulation")
CLOUD_MODULES = ("pulser", "pasqal_cloud")
LOCAL_DEVICES = ("AnalogDevice", "DigitalAnalogDevice")


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


class PasqalConnector(BookedTasks, QuantumConnector[PasqalConfig]):
    """Neutral-atom QPU (Pasqal): pulser emulation in this process, or Pasqal Cloud."""

    Config = PasqalConfig
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo",)

    def __init__(self, location: str, config: PasqalConfig) -> None:
        super().__init__(location, config)
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
        modules = LOCAL_MODULES if self.config.mode == "local" else CLOUD_MODULES
        check_extra("pasqal", PASQAL_EXTRA, modules)
        if self.config.mode == "local":
            devices = import_extra("pulser.devices", "pasqal", PASQAL_EXTRA)
            self.device = getattr(devices, self.config.device)
            import_extra("pulser_simulation", "pasqal", PASQAL_EXTRA)
            return
        assert self.config.password is not None
        self._password = resolve_secret(self.config.password)
        try:
            self._client, self.device = await in_worker(self._open_cloud)
        except MissingExtra:
            raise
        except Exception as exc:
            raise RuntimeError(
                self._scrub(
                    f"QPU {self.location}: cannot open Pasqal Cloud project "
                    f"{self.config.project_id}: {type(exc).__name__}: {exc}"
                )
            ) from None

    def _open_cloud(self) -> tuple[Any, Any]:
        client_module = import_extra("pasqal_cloud.pasqal_cloud_client", "pasqal", PASQAL_EXTRA)
        client = client_module.PasqalCloudClient(
            username=self.config.username,
            password=self._password,
            project_id=self.config.project_id,
        )
        from pulser.json.abstract_repr.deserializer import deserialize_device

        specs = client.get_device_specs_dict()
        if self.config.device not in specs:
            raise ValueError(
                f"device {self.config.device!r} is not offered (available: {', '.join(specs)})"
            )
        return client, deserialize_device(specs[self.config.device])

    async def stop(self) -> None:
        await self.book.close()

    def _require_started(self) -> Any:
        """The device model (local) or the cloud device's specs; set by :meth:`start`."""
        if self.device is None:
            raise RuntimeError(f"QPU {self.location}: connector used before start()")
        return self.device

    # -- execution (worker thread) -------------------------------------------------------------
    def _run_qubo(self, task: BookTask, qubo: Qubo, embedding: Embedding) -> QuboResult:
        sequence = build_sequence(embedding, self.device, self.config.duration)
        task.note(
            f"{qubo.num_variables} atoms on {self.device.name}: blockade radius "
            f"{embedding.blockade_radius:.2f} µm, Ω {embedding.omega:.3f} rad/µs, sweep "
            f"{self.config.duration} ns"
        )
        task.checkpoint()
        shots = self.config.shots
        if self.config.mode == "local":
            counts = emulate(task, sequence, shots, qubo.seed)
        else:
            counts = run_in_cloud(
                self._client, task, sequence, shots, self.config.emulator, self.config.poll_interval
            )
        # pulser's bitstrings have atom 0 leftmost; best_of_counts wants variable 0 rightmost
        reversed_counts = {key[::-1]: int(c) for key, c in counts.items()}
        solver = f"pasqal:{self.device.name}/adiabatic" + (
            "" if self.config.mode == "local" else f"@{self.config.emulator or 'qpu'}"
        )
        return qubo_result(
            qubo,
            reversed_counts,
            solver,
            shots,
            atoms=[list(c) for c in embedding.coords],
            blockade_radius=embedding.blockade_radius,
        )

    # -- the QuantumConnector contract ---------------------------------------------------------
    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        device = self._require_started()
        existing = self.book.find(task, idempotency_key)
        if existing is not None:
            return existing.id
        kind = task.get("kind", "qubo")
        if kind != "qubo":
            raise TaskRefused(
                f"QPU {self.location}: task kind {kind!r} is not supported (supported: qubo)"
            )
        qubo = parse_qubo(task)
        limit = min(self.config.max_atoms, device.max_atom_num or self.config.max_atoms)
        refuse_larger(qubo, limit, self.location, f"{limit} atoms")
        check_mis_shape(qubo)
        # the layout search takes up to a few seconds for graphs that cannot be embedded:
        # off the event loop, and before a task exists, so such a QUBO is refused outright
        try:
            embedding = await in_worker(embed, qubo, device, qubo.seed or 0)
        except EmbeddingError as exc:
            raise EmbeddingError(f"QPU {self.location}: {exc}") from None
        return self.book.submit(
            task, idempotency_key, kind, lambda t: self._run_qubo(t, qubo, embedding)
        ).id

    async def status(self) -> QpuStatus:
        device = self._require_started()
        running, pending = self.book.counts()
        where = (
            "emulated locally (QutipEmulator)" if self.config.mode == "local" else "Pasqal Cloud"
        )
        return QpuStatus(
            online=True,
            running=running,
            pending=pending,
            detail=f"{device.name}: {where}",
        )
