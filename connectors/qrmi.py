"""The ``qrmi`` quantum connector: any resource of IBM's vendor-neutral QRMI library.

QRMI (``pip install qrmi``, a Rust core with Python bindings) drives IBM Quantum (Quantum
Compute Service, Qiskit Runtime Service, Quantum System), Pasqal (cloud, local), IQM,
Alice & Bob, OQTOPUS, ... through one ``QuantumResource`` API whose methods qflow's contract
mirrors one to one: acquire/release, task_start/status/result/stop/logs, target, metadata,
status.

Configuration: ``resource`` (the resource id, e.g. a backend name), ``type`` (as QRMI spells
it: ``ibm-quantum-compute-service``, ``pasqal-cloud``, ...), ``environment`` (QRMI's
settings, ``QRMI_*`` names with or without the ``<resource>_`` prefix QRMI's environment
variables carry; values literal or ``${env:...}``/``${file:...}`` references) and ``secrets``
(the credential settings, references only). They are handed to
``QuantumResource.from_config`` in this process: no environment variable is set, so nothing
leaks into steps (which never run in this process anyway: it is the QPU gateway's).

Task kinds:

* ``qubo`` (IBM types): the QAOA circuit of the ``ibm`` connector, transpiled for the
  resource's backend (its target comes from QRMI), sent as a SamplerV2 program; the result's
  counts are scored with the QUBO energy and the best bitstring is returned.
* ``sampler`` (IBM types): OpenQASM circuits, transpiled and sampled; counts.
* ``primitive`` (IBM types): a raw Qiskit primitive payload (``program_id``, ``input``),
  passed through; the result is QRMI's, JSON-decoded.
* ``pulser`` (Pasqal types): a serialised pulser sequence (``sequence``) and ``shots``;
  the result is QRMI's, JSON-decoded. Not exercised offline.

``qubo`` and ``sampler`` on IBM types need qiskit (``pip install 'qflow[qrmi,ibm]'``).
QRMI has no idempotency key: the connector remembers each key's task in memory, so a retried
submission to the same gateway returns the first task (a gateway restart forgets them).
QRMI does not report QPU time: ``qpu_seconds`` stays unset and qflow counts submission to
the first final status seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal, TypeVar, cast

from pydantic import Field, field_validator, model_validator

from qflow.connectors.ibm import (
    IBM_MODULES,
    Qubo,
    ResultNotReady,
    TaskNotFound,
    TaskRefused,
    best_of_counts,
    check_extra,
    counts_of,
    extra_message,
    fingerprint,
    in_worker,
    missing_modules,
    parse_qubo,
    parse_sampler,
    plan_qaoa,
    qaoa_circuit,
    require_extra,
)
from qflow.quantum import FINAL_STATES, QpuStatus, QuantumConnector, QuantumLocationConfig, TaskInfo
from qflow.secrets import REFERENCE, SecretReference, check_reference, redact, resolve_secret

QRMI_EXTRA = "qrmi"
RESOURCE_TYPES = {
    "ibm-quantum-compute-service": "IBMQuantumComputeService",
    "qiskit-runtime-service": "IBMQiskitRuntimeService",
    "ibm-quantum-system": "IBMQuantumSystem",
    "pasqal-cloud": "PasqalCloud",
    "pasqal-local": "PasqalLocal",
    "iqm-server": "IQMServer",
    "alice-bob-felis": "AliceBobFelis",
    "oqtopus": "OQTOPUS",
}
IBM_TYPES = frozenset(
    {"ibm-quantum-compute-service", "qiskit-runtime-service", "ibm-quantum-system"}
)
PASQAL_TYPES = frozenset({"pasqal-cloud", "pasqal-local"})
REQUIRED = {
    "ibm-quantum-compute-service": (
        "QRMI_IBM_QCS_ENDPOINT",
        "QRMI_IBM_QCS_IAM_ENDPOINT",
        "QRMI_IBM_QCS_IAM_APIKEY",
        "QRMI_IBM_QCS_SERVICE_CRN",
    ),
}
"""Settings QRMI requires, where known (checked at validation, before anything runs)."""
CREDENTIAL = re.compile(r"APIKEY|API_KEY|TOKEN|SECRET|PASSWORD|ACCESS_KEY", re.IGNORECASE)
SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STATES = {
    "queued": "queued",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}

FALLBACK_ERRORS = frozenset({"PanicException", "UnsupportedFunctionError", "NotImplementedError"})
"""Errors of ``QuantumResource.from_config`` after which the resource is built from
``<resource>_QRMI_*`` environment variables instead (set for that call only)."""

T = TypeVar("T")


class QrmiTaskError(RuntimeError):
    """A QRMI call failed; the message names the location and call, never a credential."""


def _setting(resource: str, key: str) -> str:
    """``<resource>_QRMI_X`` → ``QRMI_X`` (QRMI's config keys carry no resource prefix)."""
    prefix = f"{resource}_"
    return key[len(prefix) :] if key.startswith(prefix) else key


class QrmiConfig(QuantumLocationConfig):
    resource: str = Field(description="QRMI resource id (e.g. the backend name ibm_torino).")
    type: Literal[tuple(RESOURCE_TYPES)] = Field(  # type: ignore[valid-type]
        description="QRMI resource type: " + ", ".join(RESOURCE_TYPES) + "."
    )
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="QRMI settings (QRMI_IBM_QCS_ENDPOINT, ...; the RESOURCE_ prefix that "
        "QRMI's environment variables carry is optional); values literal or ${env:NAME}/"
        "${file:PATH} references. Credentials go in secrets.",
    )
    secrets: dict[str, SecretReference] = Field(
        default_factory=dict,
        description="QRMI credential settings (QRMI_IBM_QCS_IAM_APIKEY, ...), as references "
        "only: ${env:NAME} or ${file:PATH}.",
    )
    shots: int = Field(default=1024, ge=1, le=100_000, description="Shots per QAOA circuit.")
    reps: int = Field(default=1, ge=1, le=10, description="QAOA layers (p) for qubo tasks.")
    max_variables: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Largest QUBO accepted (also capped by the backend's qubits).",
    )
    optimization_level: int = Field(
        default=1, ge=0, le=3, description="Qiskit transpiler optimisation level."
    )

    @field_validator("environment")
    @classmethod
    def _check_environment(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not SETTING.match(key):
                raise ValueError(f"environment key {key!r} is not a setting name")
            if CREDENTIAL.search(key):
                raise ValueError(
                    f"{key} is a credential: it is not accepted in environment. "
                    f"Fix: move it to secrets as {key}: ${{env:NAME}}"
                )
            if REFERENCE.match(text):
                check_reference(text)
        return value

    @model_validator(mode="after")
    def _check(self) -> QrmiConfig:
        require_extra("qrmi", QRMI_EXTRA, ("qrmi",))
        if self.type in IBM_TYPES:
            missing = missing_modules(IBM_MODULES[:2])
            if missing:
                raise ValueError(
                    f"{self.type} resources need {', '.join(missing)} (QAOA circuits, "
                    "transpiling, result decoding), which is not installed. "
                    "Fix: pip install 'qflow[qrmi,ibm]'"
                )
        given = {_setting(self.resource, k) for k in [*self.environment, *self.secrets]}
        absent = [k for k in REQUIRED.get(self.type, ()) if k not in given]
        if absent:
            raise ValueError(
                f"a {self.type} resource needs {', '.join(absent)}. Fix: add them under "
                "environment (endpoints, CRN) or secrets (the API key, as ${env:NAME})"
            )
        return self


@dataclasses.dataclass(eq=False)
class QrmiTask:
    id: str
    key: str
    kind: str
    fingerprint: str
    started: float
    qubo: Qubo | None = None
    state: str = "queued"
    ended: float | None = None
    result: dict[str, Any] | None = None


class QrmiConnector(QuantumConnector):
    """A QRMI ``QuantumResource`` as a qflow quantum location."""

    Config = QrmiConfig
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo", "sampler", "primitive", "pulser")

    def __init__(self, location: str, config: QuantumLocationConfig) -> None:
        super().__init__(location, config)
        self.cfg = cast(QrmiConfig, config)
        self._resource: Any = None
        self._qrmi: Any = None
        self._backend: Any = None
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        """QRMI resources are not safe to call from two threads at once."""
        self._submit: asyncio.Lock | None = None
        self._tasks: dict[str, QrmiTask] = {}
        self._by_key: dict[str, QrmiTask] = {}
        self._metadata: dict[str, Any] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        if self.cfg.type in IBM_TYPES:
            return ("qubo", "sampler", "primitive")
        if self.cfg.type in PASQAL_TYPES:
            return ("pulser",)
        return ()

    def _scrub(self, text: str) -> str:
        text = redact(text)
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def _error(self, call: str, exc: BaseException) -> QrmiTaskError:
        return QrmiTaskError(
            self._scrub(
                f"QPU {self.location} (qrmi {self.cfg.type} {self.cfg.resource}): {call} "
                f"failed: {type(exc).__name__}: {exc}"
            )
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def _settings(self) -> dict[str, str]:
        settings: dict[str, str] = {}
        for key, value in self.cfg.environment.items():
            settings[_setting(self.cfg.resource, key)] = (
                resolve_secret(value) if REFERENCE.match(value) else value
            )
        for key, reference in self.cfg.secrets.items():
            value = resolve_secret(reference)
            self._secrets.append(value)
            settings[_setting(self.cfg.resource, key)] = value
        return settings

    async def start(self) -> None:
        if self._resource is not None:
            return
        check_extra("qrmi", QRMI_EXTRA, ("qrmi",))
        import qrmi

        self._qrmi = qrmi
        settings = self._settings()
        kind = getattr(qrmi.ResourceType, RESOURCE_TYPES[self.cfg.type])
        try:
            self._resource = await in_worker(self._open, kind, settings)
            self._metadata = dict(await self._call("metadata", self._resource.metadata))
        except QrmiTaskError:
            raise
        except Exception as exc:
            raise self._error("opening the resource", exc) from None

    def _open(self, kind: Any, settings: dict[str, str]) -> Any:
        qrmi = self._qrmi
        try:
            return qrmi.QuantumResource.from_config(self.cfg.resource, kind, settings)
        except (qrmi.ConfigError, qrmi.EnvVarNotSetError):
            raise
        except BaseException as exc:  # a type without from_config: a Rust panic
            if type(exc).__name__ not in FALLBACK_ERRORS:
                raise
        # QRMI reads these settings from <resource>_<KEY> variables when the resource is
        # built: set them for that call only, under a lock, and restore the environment.
        names = {f"{self.cfg.resource}_{k}": v for k, v in settings.items()}
        with _ENV_LOCK, _environment(names):
            return qrmi.QuantumResource(self.cfg.resource, kind)

    async def stop(self) -> None:
        self._resource = None

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A blocking QRMI call in a worker thread, one at a time; errors scrubbed."""
        if self._resource is None:
            raise QrmiTaskError(f"QPU {self.location}: connector used before start()")

        def locked() -> T:
            with self._lock:
                return fn(*args)

        try:
            return await in_worker(locked)
        except Exception as exc:
            if self._qrmi is not None and isinstance(exc, self._qrmi.TaskNotFoundError):
                raise TaskNotFound(self._error(what, exc).args[0]) from None
            raise self._error(what, exc) from None

    # -- IBM payloads --------------------------------------------------------------------------
    def _ibm_backend(self) -> Any:
        """The resource's backend as a Qiskit BackendV2 (from QRMI's target), cached."""
        if self._backend is None:
            from qrmi.primitives.ibm import get_backend

            with self._lock:
                self._backend = get_backend(self._resource)
        return self._backend

    def _sampler_payload(self, circuits: list[Any], shots: int, seed: int | None) -> Any:
        from qiskit import qasm3, transpile

        backend = self._ibm_backend()
        isa = transpile(
            circuits,
            backend=backend,
            optimization_level=self.cfg.optimization_level,
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
        return self._qrmi.Payload.QiskitPrimitive(input=json.dumps(body), program_id="sampler")

    def _prepare(self, task: dict[str, Any], kind: str) -> tuple[Any, Qubo | None]:
        """(QRMI payload, QUBO if any) for a task; runs in a worker thread."""
        qrmi = self._qrmi
        if kind == "qubo":
            qubo = parse_qubo(task)
            qubits = self._ibm_backend().num_qubits
            limit = min(self.cfg.max_variables, qubits)
            if qubo.num_variables > limit:
                raise TaskRefused(
                    f"QPU {self.location}: the QUBO has {qubo.num_variables} variables, more "
                    f"than this QPU takes ({limit}: {self.cfg.resource} has {qubits} qubits, "
                    f"max_variables is {self.cfg.max_variables})"
                )
            circuit = qaoa_circuit(qubo, plan_qaoa(qubo, self.cfg.reps))
            return self._sampler_payload([circuit], self.cfg.shots, qubo.seed), qubo
        if kind == "sampler":
            circuits, shots = parse_sampler(task, self.cfg.shots)
            return self._sampler_payload(circuits, shots, None), None
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
        shots = task.get("shots", self.cfg.shots)
        if not isinstance(sequence, str | dict) or not isinstance(shots, int) or shots < 1:
            raise TaskRefused(
                "kind 'pulser' needs sequence (a pulser sequence in its JSON abstract "
                "representation) and shots (a positive integer)"
            )
        text = sequence if isinstance(sequence, str) else json.dumps(sequence)
        return qrmi.Payload.PasqalCloud(sequence=text, job_runs=shots), None

    # -- the QuantumConnector contract ---------------------------------------------------------
    async def task_start(self, task: dict[str, Any], idempotency_key: str) -> str:
        if self._resource is None:
            raise QrmiTaskError(f"QPU {self.location}: connector used before start()")
        kind = task.get("kind", "qubo")
        if kind not in self.kinds:
            supported = ", ".join(self.kinds) or "none"
            hint = " (use the pasqal connector for QUBOs on Pasqal)" if kind == "qubo" else ""
            raise TaskRefused(
                f"QPU {self.location}: task kind {kind!r} is not supported on qrmi "
                f"{self.cfg.type} resources (supported here: {supported}){hint}"
            )
        if kind in ("qubo", "sampler"):
            missing = missing_modules(IBM_MODULES[:2])
            if missing:
                raise TaskRefused(extra_message("qrmi", "qrmi,ibm", missing))
        if self._submit is None:
            self._submit = asyncio.Lock()
        digest = fingerprint(task)
        async with self._submit:
            known = self._by_key.get(idempotency_key)
            if known is not None:
                if known.fingerprint != digest:
                    raise TaskRefused(
                        f"idempotency key {idempotency_key!r} was already used for a different "
                        f"task ({known.id}). Fix: use a new key for a new task"
                    )
                return known.id
            try:
                payload, qubo = await in_worker(self._prepare, task, kind)
            except TaskRefused:
                raise
            except Exception as exc:
                raise self._error("preparing the task", exc) from None
            task_id = await self._call("task_start", self._resource.task_start, payload)
            item = QrmiTask(
                id=str(task_id),
                key=idempotency_key,
                kind=kind,
                fingerprint=digest,
                started=time.time(),
                qubo=qubo,
            )
            self._tasks[item.id] = item
            self._by_key[idempotency_key] = item
            return item.id

    def _item(self, task_id: str) -> QrmiTask | None:
        return self._tasks.get(task_id)

    async def task_status(self, task_id: str) -> TaskInfo:
        item = self._item(task_id)
        if item is not None and item.state in FINAL_STATES:
            state = item.state
        else:
            raw = await self._call("task_status", self._resource.task_status, task_id)
            state = STATES.get(str(raw).rsplit(".", 1)[-1].lower())
            if state is None:
                raise QrmiTaskError(f"QPU {self.location}: task {task_id}: unknown status {raw}")
            if item is not None:
                item.state = state
                if state in FINAL_STATES and item.ended is None:
                    item.ended = time.time()
        message = None
        if state == "failed":
            message = "the QPU reports the task failed (see its logs)"
        return TaskInfo(
            id=task_id,
            state=state,  # type: ignore[arg-type]
            message=message,
            started=item.started if item else None,
            ended=item.ended if item else None,
        )

    async def task_result(self, task_id: str) -> dict[str, Any]:
        item = self._item(task_id)
        if item is not None and item.result is not None:
            return item.result
        info = await self.task_status(task_id)
        if info.state != "completed":
            raise ResultNotReady(f"task {task_id} has no result, it is {info.state}")
        raw = await self._call("task_result", self._resource.task_result, task_id)
        kind = item.kind if item else "primitive"
        try:
            result = await in_worker(self._decode, kind, raw.value, item)
        except Exception as exc:
            raise self._error("decoding the result", exc) from None
        if item is not None:
            item.result = result
        return result

    def _decode(self, kind: str, text: str, item: QrmiTask | None) -> dict[str, Any]:
        where = f"qrmi:{self.cfg.type}/{self.cfg.resource}"
        if kind in ("qubo", "sampler"):
            try:
                from qiskit_ibm_runtime.decoders.result_decoder import ResultDecoder
            except ModuleNotFoundError:  # qiskit-ibm-runtime < 0.46
                from qiskit_ibm_runtime.utils.result_decoder import ResultDecoder
            decoded = ResultDecoder.decode(text)
            counts = [counts_of(pub) for pub in decoded]
            if kind == "sampler":
                return {"kind": "sampler", "counts": counts, "solver": f"{where}/sampler"}
            assert item is not None and item.qubo is not None
            sample, energy, hits = best_of_counts(item.qubo, counts[0])
            return {
                "kind": "qubo",
                "best_sample": sample,
                "best_energy": energy,
                "solver": f"{where}/qaoa",
                "num_reads": sum(counts[0].values()),
                "num_distinct": len(counts[0]),
                "best_count": hits,
                "reps": self.cfg.reps,
            }
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return {"kind": kind, "result": body, "solver": where}

    async def task_stop(self, task_id: str) -> None:
        item = self._item(task_id)
        if item is not None and item.state in FINAL_STATES:
            return
        await self._call("task_stop", self._resource.task_stop, task_id)

    async def task_logs(self, task_id: str) -> str:
        try:
            text = await self._call("task_logs", self._resource.task_logs, task_id)
        except QrmiTaskError as exc:
            if "Unsupported" in str(exc):
                return ""
            raise
        return self._scrub(str(text))

    async def acquire(self) -> str:
        return str(await self._call("acquire", self._resource.acquire))

    async def release(self, acquisition: str) -> None:
        await self._call("release", self._resource.release, acquisition)

    async def status(self) -> QpuStatus:
        raw = await self._call("status", self._resource.status)
        data = raw.to_dict() if hasattr(raw, "to_dict") else {}
        code = str(data.get("status", "")).rsplit(".", 1)[-1].lower()
        capacity = data.get("capacity")
        slots = capacity.get("max_slots") if isinstance(capacity, dict) else None
        running = sum(t.state == "running" for t in self._tasks.values())
        return QpuStatus(
            online=code == "online",
            capacity=int(slots) if isinstance(slots, int) and slots > 0 else 1,
            running=running,
            pending=int(data.get("pending_job_count") or 0),
            detail=f"{self.cfg.resource}: {code or 'unknown'}"
            + (f" ({data['status_reason']})" if data.get("status_reason") else ""),
        )

    async def target(self) -> dict[str, Any]:
        raw = await self._call("target", self._resource.target)
        try:
            body: Any = json.loads(raw.value)
        except ValueError:
            body = raw.value
        summary: dict[str, Any] = {
            "resource": self.cfg.resource,
            "type": self.cfg.type,
            "kinds": list(self.kinds),
        }
        conf = body.get("configuration") if isinstance(body, dict) else None
        if isinstance(conf, dict):  # IBM: configuration + properties, large; keep the essence
            summary.update(
                num_qubits=conf.get("n_qubits"),
                basis_gates=conf.get("basis_gates"),
                coupling_map=conf.get("coupling_map"),
                max_variables=min(self.cfg.max_variables, conf.get("n_qubits") or 0),
            )
        else:
            summary["target"] = body
        return summary

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "resource": self.cfg.resource,
            "type": self.cfg.type,
            **{f"qrmi_{k}": v for k, v in self._metadata.items()},
        }


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
