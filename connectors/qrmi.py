"""The ``qrmi`` quantum connector: any resource of IBM's vendor-neutral QRMI library.

QRMI (``pip install qrmi``, a Rust core with Python bindings) drives IBM Quantum (Quantum
Compute Service, Qiskit Runtime Service, Quantum System), Pasqal (cloud, local), IQM,
Alice & Bob, OQTOPUS, ... through one ``QuantumResource`` API whose task methods qflow's
contract mirrors one to one: task_start/status/result/stop/logs and status. (QRMI's
acquire/release are not used: the gateway's lease is qflow's acquisition of a QPU.)

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

The location's keys are :mod:`~qflow.connectors.qrmi_config`'s; a resource is built by
:mod:`~qflow.connectors.qrmi_resource`, tasks become payloads in
:mod:`~qflow.connectors.qrmi_payloads` and results are decoded in
:mod:`~qflow.connectors.qrmi_results`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from qflow.connectors.qrmi_config import (
    IBM_TYPES,
    PASQAL_TYPES,
    QRMI_EXTRA,
    RESOURCE_TYPES,
    QrmiConfig,
    setting_name,
)
from qflow.connectors.qrmi_payloads import task_payload
from qflow.connectors.qrmi_resource import open_resource
from qflow.connectors.qrmi_results import decode_result
from qflow.connectors.qubo import Qubo
from qflow.connectors.sdk_extras import IBM_MODULES, check_extra, extra_message, missing_modules
from qflow.connectors.sdk_threads import in_worker
from qflow.connectors.task_book import fingerprint, reused_key
from qflow.connectors.task_errors import ResultNotReady, TaskNotFound, TaskRefused
from qflow.quantum import FINAL_STATES, QpuStatus, QuantumConnector, TaskBody, TaskInfo, TaskState
from qflow.secrets import REFERENCE, redact, resolve_secret

STATES: dict[str, TaskState] = {
    "queued": "queued",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}

T = TypeVar("T")


class QrmiTaskError(RuntimeError):
    """A QRMI call failed; the message names the location and call, never a credential."""


@dataclasses.dataclass(eq=False)
class QrmiTask:
    id: str
    key: str
    kind: str
    fingerprint: str
    started: float
    qubo: Qubo | None = None
    state: TaskState = "queued"
    ended: float | None = None
    result: dict[str, Any] | None = None


class QrmiConnector(QuantumConnector[QrmiConfig]):
    """A QRMI ``QuantumResource`` as a qflow quantum location."""

    Config = QrmiConfig
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo", "sampler", "primitive", "pulser")

    def __init__(self, location: str, config: QrmiConfig) -> None:
        super().__init__(location, config)
        self._resource: Any = None
        self._qrmi: Any = None
        self._backend: Any = None
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        """QRMI resources are not safe to call from two threads at once."""
        self._submit: asyncio.Lock | None = None
        self._tasks: dict[str, QrmiTask] = {}
        self._by_key: dict[str, QrmiTask] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        if self.config.type in IBM_TYPES:
            return ("qubo", "sampler", "primitive")
        if self.config.type in PASQAL_TYPES:
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
                f"QPU {self.location} (qrmi {self.config.type} {self.config.resource}): {call} "
                f"failed: {type(exc).__name__}: {exc}"
            )
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def _settings(self) -> dict[str, str]:
        settings: dict[str, str] = {}
        for key, value in self.config.environment.items():
            settings[setting_name(self.config.resource, key)] = (
                resolve_secret(value) if REFERENCE.match(value) else value
            )
        for key, reference in self.config.secrets.items():
            value = resolve_secret(reference)
            self._secrets.append(value)
            settings[setting_name(self.config.resource, key)] = value
        return settings

    async def start(self) -> None:
        if self._resource is not None:
            return
        check_extra("qrmi", QRMI_EXTRA, ("qrmi",))
        import qrmi

        self._qrmi = qrmi
        settings = self._settings()
        # ResourceType is in qrmi's compiled core, which ships no type stub
        kind = getattr(qrmi.ResourceType, RESOURCE_TYPES[self.config.type])  # type: ignore[attr-defined]
        try:
            self._resource = await in_worker(
                open_resource, qrmi, self.config.resource, kind, settings
            )
        except QrmiTaskError:
            raise
        except Exception as exc:
            raise self._error("opening the resource", exc) from None

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

    # -- IBM types: the backend their payloads are transpiled for ------------------------------
    def _ibm_backend(self) -> Any:
        """The resource's backend as a Qiskit BackendV2 (from QRMI's target), cached."""
        if self._backend is None:
            from qrmi.primitives.ibm import get_backend

            with self._lock:
                self._backend = get_backend(self._resource)
        return self._backend

    # -- the QuantumConnector contract ---------------------------------------------------------
    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        if self._resource is None:
            raise QrmiTaskError(f"QPU {self.location}: connector used before start()")
        kind = task.get("kind", "qubo")
        if kind not in self.kinds:
            supported = ", ".join(self.kinds) or "none"
            hint = " (use the pasqal connector for QUBOs on Pasqal)" if kind == "qubo" else ""
            raise TaskRefused(
                f"QPU {self.location}: task kind {kind!r} is not supported on qrmi "
                f"{self.config.type} resources (supported here: {supported}){hint}"
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
                    raise reused_key(idempotency_key, known.id)
                return known.id
            try:
                payload, qubo = await in_worker(
                    task_payload,
                    self._qrmi,
                    self.config,
                    self.location,
                    self._ibm_backend,
                    task,
                    kind,
                )
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
            reported = STATES.get(str(raw).rsplit(".", 1)[-1].lower())
            if reported is None:
                raise QrmiTaskError(f"QPU {self.location}: task {task_id}: unknown status {raw}")
            state = reported
            if item is not None:
                item.state = state
                if state in FINAL_STATES and item.ended is None:
                    item.ended = time.time()
        message = None
        if state == "failed":
            message = "the QPU reports the task failed (see its logs)"
        return TaskInfo(
            id=task_id,
            state=state,
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
        qubo = item.qubo if item else None
        where = f"qrmi:{self.config.type}/{self.config.resource}"
        try:
            result = await in_worker(decode_result, kind, raw.value, qubo, where, self.config.reps)
        except Exception as exc:
            raise self._error("decoding the result", exc) from None
        if item is not None:
            item.result = result
        return result

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
            detail=f"{self.config.resource}: {code or 'unknown'}"
            + (f" ({data['status_reason']})" if data.get("status_reason") else ""),
        )
