"""The ``ibm`` quantum connector: QUBOs by QAOA and OpenQASM circuits on IBM Quantum backends.

Two modes (``mode`` in deployment.yml):

* ``local``: qiskit-ibm-runtime's local testing mode. The backend is a fake IBM device
  (``fake_nairobi``, ``fake_manila``, ...: real coupling map, basis gates and noise model)
  simulated by qiskit-aer in this process. Runs offline.
* ``cloud``: the real IBM Quantum service through ``QiskitRuntimeService`` (``channel``,
  ``instance``, ``token`` as a credential reference, ``backend``). Not testable offline.

Task kinds:

* ``qubo``: the QUBO becomes an Ising cost Hamiltonian; a hand-built QAOA circuit with
  ``reps`` layers gets its angles from a classical optimisation on an exact statevector
  (numpy, in this process; a grid search for one layer, then a local refinement), is
  transpiled for the backend and sampled with ``SamplerV2(mode=backend)``. Every measured
  bitstring is scored with the QUBO's own energy and the best one is the answer, so the result
  is never worse than the best sample. QUBOs with more variables than the backend has qubits
  (or than ``max_variables``) are refused at submission.
* ``sampler``: OpenQASM 2 or 3 circuits (``circuits``), run with ``shots``; the result holds
  the counts per circuit.

The SDK is an optional extra (``pip install 'qflow[ibm]'``): without it this module still
imports, but validating a location that uses it, and :meth:`IbmConnector.start`, say which
extra to install.

The QAOA circuit is built by :mod:`~qflow.connectors.qiskit_qaoa`, OpenQASM programs are read
and counts decoded by :mod:`~qflow.connectors.qiskit_circuits`; the helpers shared with the
``pasqal`` and ``qrmi`` connectors (QUBO tasks, the task book, the SDK check, worker threads)
are in :mod:`~qflow.connectors.qubo`, :mod:`~qflow.connectors.task_book`,
:mod:`~qflow.connectors.sdk_extras` and :mod:`~qflow.connectors.sdk_threads`; the names
they had here are still importable from this module.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from qflow.connectors.qiskit_circuits import counts_of, parse_sampler
from qflow.connectors.qiskit_qaoa import plan_qaoa, qaoa_circuit
from qflow.connectors.qubo import Qubo, parse_qubo, qubo_result, refuse_larger
from qflow.connectors.sdk_extras import (
    IBM_EXTRA,
    IBM_MODULES,
    MissingExtra,
    check_extra,
    import_extra,
    require_extra,
)
from qflow.connectors.sdk_threads import in_worker
from qflow.connectors.task_book import BookedTasks, BookTask, TaskBook, Work
from qflow.connectors.task_errors import TaskRefused
from qflow.qpu_client import QuboResult
from qflow.quantum import QpuStatus, QuantumConnector, QuantumLocationConfig, TaskBody
from qflow.secrets import SecretReference, redact, resolve_secret

__all__ = ["IbmConfig", "IbmConnector"]


class IbmConfig(QuantumLocationConfig):
    mode: Literal["local", "cloud"] = Field(
        default="local",
        description="local: a fake IBM backend simulated in this process (qiskit-aer, "
        "offline); cloud: the real IBM Quantum service (needs channel, instance, token).",
    )
    backend: str | None = Field(
        default=None,
        description="Backend name: a fake backend in local mode (fake_nairobi: 7 qubits, "
        "fake_manila: 5, fake_guadalupe: 16, ...; default fake_nairobi), a device in cloud "
        "mode (e.g. ibm_torino; required).",
    )
    channel: Literal["ibm_quantum_platform", "ibm_cloud"] = Field(
        default="ibm_quantum_platform", description="cloud mode: the service channel."
    )
    instance: str | None = Field(
        default=None, description="cloud mode: the service instance (CRN or name)."
    )
    token: SecretReference | None = Field(
        default=None,
        description="cloud mode: the IBM Cloud API key, as a reference: ${env:NAME} or "
        "${file:PATH}.",
    )
    shots: int = Field(default=1024, ge=1, le=100_000, description="Shots per QAOA circuit.")
    reps: int = Field(default=1, ge=1, le=10, description="QAOA layers (p).")
    max_variables: int = Field(
        default=12,
        ge=1,
        le=156,
        description="Largest QUBO accepted (also capped by the backend's qubits); local mode "
        "simulates every qubit, so keep it small there.",
    )
    optimization_level: int = Field(
        default=1, ge=0, le=3, description="Qiskit transpiler optimisation level."
    )

    @model_validator(mode="after")
    def _check(self) -> IbmConfig:
        require_extra("ibm", IBM_EXTRA, IBM_MODULES)
        if self.mode == "cloud":
            missing = [k for k in ("backend", "instance", "token") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"mode cloud needs {', '.join(missing)}. Fix: add e.g. backend: "
                    "ibm_torino, instance: <CRN>, token: ${env:IBM_QUANTUM_TOKEN}"
                )
            if self.backend and self.backend.startswith("fake_"):
                raise ValueError(
                    f"{self.backend} is a fake backend: it exists in local mode only. "
                    "Fix: set mode: local, or name a real backend"
                )
        return self


DEFAULT_LOCAL_BACKEND = "fake_nairobi"


class IbmConnector(BookedTasks, QuantumConnector[IbmConfig]):
    """IBM Quantum through qiskit-ibm-runtime: local fake backends or the real service."""

    Config = IbmConfig
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo", "sampler")

    def __init__(self, location: str, config: IbmConfig) -> None:
        super().__init__(location, config)
        self.backend_name = self.config.backend or DEFAULT_LOCAL_BACKEND
        self._backend: Any = None
        self._token = ""
        self.book = TaskBook(f"ibm-{location}", self._scrub)

    def _scrub(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._token, "***") if self._token else text

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._backend is None:
            check_extra("ibm", IBM_EXTRA, IBM_MODULES)
            if self.config.mode == "cloud" and self.config.token:
                self._token = resolve_secret(self.config.token)
            try:
                self._backend = await in_worker(self._open_backend)
            except MissingExtra:
                raise
            except Exception as exc:
                raise RuntimeError(
                    self._scrub(
                        f"QPU {self.location}: cannot open IBM backend {self.backend_name} "
                        f"({self.config.mode} mode): {type(exc).__name__}: {exc}"
                    )
                ) from None

    def _open_backend(self) -> Any:
        if self.config.mode == "local":
            module = import_extra("qiskit_ibm_runtime.fake_provider.local_service", "ibm", "ibm")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fake backends warn about their own values
                return module.QiskitRuntimeLocalService().backend(self.backend_name)
        runtime = import_extra("qiskit_ibm_runtime", "ibm", "ibm")
        service = runtime.QiskitRuntimeService(
            channel=self.config.channel, token=self._token, instance=self.config.instance
        )
        return service.backend(self.backend_name)

    async def stop(self) -> None:
        await self.book.close()

    def _require_started(self) -> Any:
        if self._backend is None:
            raise RuntimeError(f"QPU {self.location}: connector used before start()")
        return self._backend

    # -- execution (worker thread) -------------------------------------------------------------
    def _sample(self, task: BookTask, circuits: list[Any], shots: int, seed: int | None) -> Any:
        """Transpile and run ``circuits``; returns the PrimitiveResult; sets qpu_seconds."""
        from qiskit import transpile
        from qiskit_ibm_runtime import SamplerV2

        backend = self._require_started()
        transpiled = transpile(
            circuits,
            backend=backend,
            optimization_level=self.config.optimization_level,
            seed_transpiler=seed,
        )
        task.note(f"transpiled for {self.backend_name}: depth {[c.depth() for c in transpiled]}")
        task.checkpoint()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # SamplerV2 in 0.50+
            sampler = SamplerV2(mode=backend)
            if self.config.mode == "local" and seed is not None:
                sampler.options.simulator.seed_simulator = seed
            began = time.perf_counter()
            job = sampler.run(transpiled, shots=shots)
        task.on_cancel = job.cancel if self.config.mode == "cloud" else None
        task.note(f"job {job.job_id()} submitted ({shots} shots)")
        result = job.result()
        task.on_cancel = None
        if self.config.mode == "local":
            task.qpu_seconds = time.perf_counter() - began
        else:
            task.qpu_seconds = _usage(job)
        task.checkpoint()
        return result

    def _run_qubo(self, task: BookTask, qubo: Qubo) -> QuboResult:
        began = time.perf_counter()
        plan = plan_qaoa(qubo, self.config.reps)
        task.note(
            f"QAOA angles in {time.perf_counter() - began:.2f} s: gamma={list(plan.gammas)} "
            f"beta={list(plan.betas)} expected energy {plan.expected_energy}"
        )
        task.checkpoint()
        shots = self.config.shots
        result = self._sample(task, [qaoa_circuit(qubo, plan)], shots, qubo.seed)
        return qubo_result(
            qubo,
            counts_of(result[0]),
            f"ibm:{self.backend_name}/qaoa",
            shots,
            reps=self.config.reps,
            gammas=list(plan.gammas),
            betas=list(plan.betas),
        )

    def _run_sampler(self, task: BookTask, circuits: list[Any], shots: int) -> dict[str, Any]:
        result = self._sample(task, circuits, shots, None)
        return {
            "kind": "sampler",
            "counts": [counts_of(pub) for pub in result],
            "shots": shots,
            "solver": f"ibm:{self.backend_name}/sampler",
        }

    # -- the QuantumConnector contract ---------------------------------------------------------
    def check_task(self, task: TaskBody) -> tuple[str, Work]:
        """Validate a task and return its kind and the work to run (raises TaskRefused)."""
        kind = task.get("kind", "qubo")
        qubits = self._require_started().num_qubits
        if kind == "qubo":
            qubo = parse_qubo(task)
            limit = min(self.config.max_variables, qubits)
            why = (
                f"{self.backend_name} has {qubits} qubits"
                if qubits < self.config.max_variables
                else f"max_variables is {self.config.max_variables}"
            )
            refuse_larger(qubo, limit, self.location, f"{limit}: {why}")
            return kind, lambda t: self._run_qubo(t, qubo)
        if kind == "sampler":
            circuits, shots = parse_sampler(task, self.config.shots)
            wide = [c.num_qubits for c in circuits if c.num_qubits > qubits]
            if wide:
                raise TaskRefused(
                    f"QPU {self.location}: a circuit has {max(wide)} qubits, "
                    f"{self.backend_name} has {qubits}"
                )
            return kind, lambda t: self._run_sampler(t, circuits, shots)
        raise TaskRefused(
            f"QPU {self.location}: task kind {kind!r} is not supported "
            f"(supported: {', '.join(self.task_kinds)})"
        )

    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        existing = self.book.find(task, idempotency_key)
        if existing is not None:
            return existing.id
        kind, work = self.check_task(task)
        return self.book.submit(task, idempotency_key, kind, work).id

    async def status(self) -> QpuStatus:
        backend = self._require_started()
        running, pending = self.book.counts()
        if self.config.mode == "local":
            return QpuStatus(
                online=True,
                running=running,
                pending=pending,
                detail=f"{self.backend_name}: {backend.num_qubits} qubits, simulated locally",
            )
        state = await in_worker(backend.status)
        return QpuStatus(
            online=bool(state.operational),
            running=running,
            pending=pending + int(getattr(state, "pending_jobs", 0) or 0),
            detail=f"{self.backend_name}: {getattr(state, 'status_msg', '')}",
        )


def _usage(job: Any) -> float | None:
    """QPU seconds the IBM service accounts for a job (None if it does not say)."""
    try:
        usage = job.usage()
        return float(usage) if usage is not None else None
    except Exception:  # noqa: BLE001 - older service versions: look in the metrics
        try:
            return float(job.metrics()["usage"]["quantum_seconds"])
        except Exception:  # noqa: BLE001
            return None
