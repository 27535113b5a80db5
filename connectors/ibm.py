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

The helpers at the top (QUBO parsing and energy, the in-memory task book, the SDK check) are
shared by the ``pasqal`` and ``qrmi`` connectors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal, cast

from pydantic import Field, model_validator

from qflow.quantum import QpuStatus, QuantumConnector, QuantumLocationConfig, TaskInfo, TaskState
from qflow.secrets import SecretReference, redact, resolve_secret

IBM_EXTRA = "ibm"
IBM_MODULES = ("qiskit", "qiskit_ibm_runtime", "qiskit_aer")
MAX_QUBO_TERMS = 100_000
STATEVECTOR_LIMIT = 16
"""Largest QUBO whose QAOA angles are optimised on an exact statevector (2**16 amplitudes)."""


# --- shared: optional SDKs ---------------------------------------------------------------------


class MissingExtra(ImportError):
    """The connector's SDK is not installed; the message names the extra to install."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (checked without importing them)."""
    missing = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:  # an import that is known to fail
                missing.append(name)
            continue
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def extra_message(connector: str, extra: str, modules: Sequence[str]) -> str:
    names = ", ".join(m.replace("_", "-") for m in modules)
    return (
        f"the {connector!r} connector needs {names}, which is not installed. "
        f"Fix: pip install 'qflow[{extra}]'"
    )


def check_extra(connector: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`MissingExtra` (a message ending in the pip command) if a module is missing."""
    missing = missing_modules(modules)
    if missing:
        raise MissingExtra(extra_message(connector, extra, missing))


def require_extra(connector: str, extra: str, modules: Sequence[str]) -> None:
    """:func:`check_extra` for config validators: a ``ValueError`` that pydantic reports."""
    try:
        check_extra(connector, extra, modules)
    except MissingExtra as exc:
        raise ValueError(str(exc)) from None


def import_extra(module: str, connector: str, extra: str) -> Any:
    """``importlib.import_module`` that turns a failed import into :class:`MissingExtra`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra_message(connector, extra, [module.split(".")[0]])) from exc


# --- shared: worker threads --------------------------------------------------------------------

WORKERS = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="qflow-qpu")
"""Long-lived threads for blocking SDK calls (simulations, transpiling, vendor clients).

Not ``asyncio.to_thread``: each event loop's default executor dies with the loop, and with
qrmi loaded, qiskit's allocator (mimalloc, qiskit 2.6 + qrmi 0.26) crashed the process
(SIGSEGV in ``mi_thread_init``) when a fresh thread built a circuit after earlier ones had
exited. Threads that live as long as the process avoid it.
"""


async def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in one of the :data:`WORKERS` threads."""
    return await asyncio.get_running_loop().run_in_executor(WORKERS, functools.partial(fn, *args))


# --- shared: QUBO tasks ------------------------------------------------------------------------


class TaskRefused(ValueError):
    """A task this QPU cannot take (bad fields, too large, wrong shape); nothing was started."""


@dataclasses.dataclass(frozen=True)
class Qubo:
    """A checked ``qubo`` task: minimise Σ value·x_i·x_j over x ∈ {0, 1}^n."""

    num_variables: int
    terms: tuple[tuple[int, int, float], ...]
    """(i, j, value) with i <= j; duplicates are summed; i == j: linear."""
    num_reads: int | None = None
    seed: int | None = None

    def energy(self, bits: Sequence[int]) -> float:
        return sum(v * bits[i] * bits[j] for i, j, v in self.terms)

    def energies(self) -> Any:
        """numpy vector of the energy of every bitstring k (bit i of k is variable i)."""
        import numpy as np

        index = np.arange(2**self.num_variables, dtype=np.int64)
        bits = [(index >> i) & 1 for i in range(self.num_variables)]
        total = np.zeros(index.shape, dtype=float)
        for i, j, v in self.terms:
            total += v * (bits[i] & bits[j])
        return total

    def ising(self) -> tuple[float, dict[int, float], dict[tuple[int, int], float]]:
        """(offset, h, J) with f(x) = offset + Σ h_i z_i + Σ J_ij z_i z_j, x_i = (1 - z_i) / 2.

        z_i = +1 is the measured bit 0, so a measured bitstring reads directly as x.
        """
        offset = 0.0
        h: dict[int, float] = {}
        coupling: dict[tuple[int, int], float] = {}
        for i, j, v in self.terms:
            if i == j:
                offset += v / 2
                h[i] = h.get(i, 0.0) - v / 2
            else:
                offset += v / 4
                h[i] = h.get(i, 0.0) - v / 4
                h[j] = h.get(j, 0.0) - v / 4
                coupling[(i, j)] = coupling.get((i, j), 0.0) + v / 4
        return offset, h, coupling

    def conflict_edges(self) -> list[tuple[int, int]]:
        return [(i, j) for i, j, v in self.terms if i != j and v != 0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(task: dict[str, Any], key: str, default: int | None, low: int, high: int) -> Any:
    value = task.get(key)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise TaskRefused(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def parse_qubo(task: dict[str, Any]) -> Qubo:
    """Check a ``qubo`` task (docs/connectors.md); other fields (num_sweeps, ...) are ignored."""
    n = _int_field(task, "num_variables", None, 1, 100_000)
    if n is None:
        raise TaskRefused("num_variables is required for kind 'qubo'")
    terms = task.get("qubo")
    if not isinstance(terms, list):
        raise TaskRefused("qubo is required for kind 'qubo': a list of [i, j, value] terms")
    if len(terms) > MAX_QUBO_TERMS:
        raise TaskRefused(f"qubo has {len(terms)} terms, more than {MAX_QUBO_TERMS}")
    summed: dict[tuple[int, int], float] = {}
    for k, term in enumerate(terms):
        if not isinstance(term, list | tuple) or len(term) != 3:
            raise TaskRefused(f"qubo[{k}] must be a list [i, j, value], got {term!r}")
        i, j, value = term
        for name, index in (("i", i), ("j", j)):
            if not _is_int(index) or not 0 <= index < n:
                raise TaskRefused(
                    f"qubo[{k}]: index {name}={index!r} must be an integer from 0 to {n - 1}"
                )
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise TaskRefused(f"qubo[{k}]: value must be a finite number, got {value!r}")
        key = (min(i, j), max(i, j))
        summed[key] = summed.get(key, 0.0) + float(value)
    return Qubo(
        num_variables=n,
        terms=tuple((i, j, v) for (i, j), v in sorted(summed.items())),
        num_reads=_int_field(task, "num_reads", None, 1, 1_000_000),
        seed=_int_field(task, "seed", None, 0, 2**32 - 1),
    )


def best_of_counts(qubo: Qubo, counts: dict[str, int]) -> tuple[list[int], float, int]:
    """The lowest-energy bitstring among measured ones: (sample, energy, times measured).

    Keys are bitstrings with variable 0 rightmost (Qiskit's order); ties go to the more
    frequent, then the lexicographically smaller one, so the answer is reproducible.
    """
    best: tuple[float, int, str] | None = None
    n = qubo.num_variables
    for key, count in counts.items():
        bits = key.replace(" ", "")[-n:].rjust(n, "0")
        sample = [int(bits[-1 - i]) for i in range(n)]
        candidate = (qubo.energy(sample), -count, bits)
        if best is None or candidate < best:
            best = candidate
    if best is None:
        raise RuntimeError("the backend returned no measurement")
    energy, negcount, bits = best
    return [int(bits[-1 - i]) for i in range(n)], energy, -negcount


def fingerprint(task: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(task, sort_keys=True, default=str).encode()).hexdigest()


# --- shared: the in-memory task book -----------------------------------------------------------


class TaskCancelled(Exception):
    """Raised inside a work function that noticed its task was stopped."""


@dataclasses.dataclass(eq=False)
class BookTask:
    """One task of a :class:`TaskBook`; ``work`` runs in a worker thread."""

    id: str
    key: str
    kind: str
    fingerprint: str
    created: float
    state: TaskState = "queued"
    message: str | None = None
    started: float | None = None
    ended: float | None = None
    qpu_seconds: float | None = None
    result: dict[str, Any] | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    on_cancel: Callable[[], None] | None = None
    """Set by the work function while something remote runs (e.g. a cloud job's cancel)."""
    runner: asyncio.Task[None] | None = None

    def note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.log.append(f"{stamp} {text}")

    def checkpoint(self) -> None:
        """Give up early if the task was stopped meanwhile."""
        if self.cancel_event.is_set():
            raise TaskCancelled

    def info(self) -> TaskInfo:
        return TaskInfo(
            id=self.id,
            state=self.state,
            message=self.message,
            qpu_seconds=self.qpu_seconds,
            started=self.started,
            ended=self.ended,
        )


Work = Callable[[BookTask], dict[str, Any]]


class TaskNotFound(KeyError):
    """No task with this id (never submitted here, or the connector was restarted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class ResultNotReady(RuntimeError):
    """The task has no result: it is not completed (still running, failed or cancelled)."""


class TaskBook:
    """The tasks of one connector, in memory, executed one at a time (a QPU runs one task).

    ``submit`` with an idempotency key seen before returns the same task (a different task
    under the same key is refused). Work functions run in a worker thread
    (:data:`WORKERS`) and may call ``task.checkpoint()`` to stop early once cancelled.
    """

    def __init__(self, prefix: str, scrub: Callable[[str], str] = redact) -> None:
        self.prefix = prefix
        self.scrub = scrub
        self.tasks: dict[str, BookTask] = {}
        self._by_key: dict[str, BookTask] = {}
        self._lock: asyncio.Lock | None = None

    def find(self, task: dict[str, Any], key: str) -> BookTask | None:
        """The task submitted before under ``key`` (None: a new key); a different task under
        a known key is refused."""
        existing = self._by_key.get(key)
        if existing is not None and existing.fingerprint != fingerprint(task):
            raise TaskRefused(
                f"idempotency key {key!r} was already used for a different task "
                f"({existing.id}). Fix: use a new key for a new task"
            )
        return existing

    def submit(self, task: dict[str, Any], key: str, kind: str, work: Work) -> BookTask:
        existing = self.find(task, key)
        if existing is not None:
            return existing
        digest = fingerprint(task)
        if self._lock is None:
            self._lock = asyncio.Lock()
        item = BookTask(
            id=f"{self.prefix}-{uuid.uuid4().hex[:12]}",
            key=key,
            kind=kind,
            fingerprint=digest,
            created=time.time(),
        )
        item.note(f"queued ({kind})")
        self.tasks[item.id] = item
        self._by_key[key] = item
        item.runner = asyncio.get_running_loop().create_task(self._run(item, work))
        return item

    async def _run(self, item: BookTask, work: Work) -> None:
        assert self._lock is not None
        async with self._lock:
            if item.state != "queued":
                return
            item.state = "running"
            item.started = time.time()
            item.note("running")
            try:
                result = await in_worker(work, item)
            except TaskCancelled:
                self._finish(item, "cancelled", "stopped by request")
            except asyncio.CancelledError:
                self._finish(item, "cancelled", "the connector stopped")
                raise
            except Exception as exc:  # noqa: BLE001 - the task failed; say why in its state
                self._finish(item, "failed", self.scrub(f"{type(exc).__name__}: {exc}"))
            else:
                if item.state == "running":
                    item.result = result
                    self._finish(item, "completed", None)

    def _finish(self, item: BookTask, state: TaskState, message: str | None) -> None:
        if item.state in ("queued", "running"):
            item.state = state
            item.message = message
            item.ended = time.time()
            item.note(state + (f": {message}" if message else ""))

    def get(self, task_id: str) -> BookTask:
        item = self.tasks.get(task_id)
        if item is None:
            raise TaskNotFound(f"no task {task_id!r} on this QPU")
        return item

    def result(self, task_id: str) -> dict[str, Any]:
        item = self.get(task_id)
        if item.state != "completed" or item.result is None:
            detail = f": {item.message}" if item.message else ""
            raise ResultNotReady(f"task {task_id} has no result, it is {item.state}{detail}")
        return item.result

    async def stop(self, task_id: str) -> None:
        """Cancel a queued task at once; a running one is flagged, and its remote part (if
        any) cancelled; a final task is left as it is."""
        item = self.get(task_id)
        if item.state not in ("queued", "running"):
            return
        item.cancel_event.set()
        on_cancel = item.on_cancel
        self._finish(item, "cancelled", "stopped by request")
        if on_cancel is not None:
            try:
                await in_worker(on_cancel)
            except Exception as exc:  # noqa: BLE001 - best effort: the state already says so
                item.note(self.scrub(f"remote cancel failed: {type(exc).__name__}: {exc}"))

    def counts(self) -> tuple[int, int]:
        """(running, pending) tasks."""
        states = [t.state for t in self.tasks.values()]
        return states.count("running"), states.count("queued")

    async def close(self) -> None:
        """Stop every unfinished task (remote parts included, so no worker thread stays
        blocked on a vendor job) and end the runners."""
        for item in list(self.tasks.values()):
            if item.state in ("queued", "running"):
                await self.stop(item.id)
        runners = [t.runner for t in self.tasks.values() if t.runner and not t.runner.done()]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)


# --- QAOA (qiskit) -----------------------------------------------------------------------------


class BookedTasks:
    """The task_* methods of a quantum connector whose tasks live in a :class:`TaskBook`."""

    book: TaskBook
    _scrub: Callable[[str], str]
    """Removes credentials from text (defined by each connector)."""

    async def task_status(self, task_id: str) -> TaskInfo:
        return self.book.get(task_id).info()

    async def task_result(self, task_id: str) -> dict[str, Any]:
        return self.book.result(task_id)

    async def task_stop(self, task_id: str) -> None:
        await self.book.stop(task_id)

    async def task_logs(self, task_id: str) -> str:
        return self._scrub("\n".join(self.book.get(task_id).log))


@dataclasses.dataclass(frozen=True)
class QaoaPlan:
    """Angles of a QAOA circuit for one QUBO, on the QUBO's own energy scale."""

    gammas: tuple[float, ...]
    betas: tuple[float, ...]
    expected_energy: float | None
    """Expectation of the QUBO energy for these angles (exact; None if not computed)."""


def _qaoa_statevector(
    qubo: Qubo, energies: Any, gammas: Sequence[float], betas: Sequence[float]
) -> Any:
    """Exact QAOA state: H^n|0>, then per layer exp(-i γ f) and exp(-i β Σ X)."""
    import numpy as np

    n = qubo.num_variables
    state = np.full(2**n, 2 ** (-n / 2), dtype=complex)
    for gamma, beta in zip(gammas, betas, strict=True):
        state = state * np.exp(-1j * gamma * energies)
        c, s = math.cos(beta), -1j * math.sin(beta)
        tensor = state.reshape((2,) * n)
        for axis in range(n):
            a = np.take(tensor, 0, axis=axis)
            b = np.take(tensor, 1, axis=axis)
            tensor = np.stack((c * a + s * b, s * a + c * b), axis=axis)
        state = tensor.reshape(-1)
    return state


def plan_qaoa(qubo: Qubo, reps: int) -> QaoaPlan:
    """Angles for ``reps`` QAOA layers: grid search (1 layer) + Nelder-Mead on the exact
    expectation for small QUBOs; a fixed linear ramp above :data:`STATEVECTOR_LIMIT` variables.

    γ multiplies the QUBO energy itself (the constant offset only adds a global phase), so it
    is scaled by the largest Ising coefficient to stay in a sensible range.
    """
    import numpy as np

    _, h, coupling = qubo.ising()
    scale = max([abs(v) for v in [*h.values(), *coupling.values()]] or [1.0]) or 1.0
    ramp_g = tuple(0.8 * (k + 1) / reps / scale for k in range(reps))
    ramp_b = tuple(0.7 * (1 - k / reps) for k in range(reps))
    if qubo.num_variables > STATEVECTOR_LIMIT:
        return QaoaPlan(ramp_g, ramp_b, None)
    energies = qubo.energies()

    def expectation(params: Sequence[float]) -> float:
        gammas, betas = params[:reps], params[reps:]
        probs = np.abs(_qaoa_statevector(qubo, energies, gammas, betas)) ** 2
        return float(probs @ energies)

    best = (expectation((*ramp_g, *ramp_b)), (*ramp_g, *ramp_b))
    for g, b in itertools.product(np.linspace(0.1, math.pi, 16), np.linspace(0.1, 1.5, 8)):
        params = (*[g / scale * (k + 1) / reps for k in range(reps)], *[b] * reps)
        value = expectation(params)
        if value < best[0]:
            best = (value, params)
    from scipy.optimize import minimize

    refined = minimize(
        expectation, np.array(best[1]), method="Nelder-Mead", options={"maxiter": 150 * reps}
    )
    if refined.fun < best[0]:
        best = (float(refined.fun), tuple(float(x) for x in refined.x))
    params = best[1]
    return QaoaPlan(tuple(params[:reps]), tuple(params[reps:]), best[0])


def qaoa_circuit(qubo: Qubo, plan: QaoaPlan) -> Any:
    """The QAOA circuit (measured) for ``qubo``: RZ/RZZ cost layers, RX mixers."""
    from qiskit import QuantumCircuit

    _, h, coupling = qubo.ising()
    n = qubo.num_variables
    circuit = QuantumCircuit(n, name="qaoa")
    circuit.h(range(n))
    for gamma, beta in zip(plan.gammas, plan.betas, strict=True):
        for (i, j), value in sorted(coupling.items()):
            if value:
                circuit.rzz(2 * gamma * value, i, j)
        for i, value in sorted(h.items()):
            if value:
                circuit.rz(2 * gamma * value, i)
        circuit.rx(2 * beta, range(n))
    circuit.measure_all()
    return circuit


def cost_operator(qubo: Qubo) -> Any:
    """The Ising cost Hamiltonian as a ``SparsePauliOp`` (its eigenvalue on |x> is f(x))."""
    from qiskit.quantum_info import SparsePauliOp

    offset, h, coupling = qubo.ising()
    terms: list[tuple[str, list[int], float]] = [("", [], offset)]
    terms += [("Z", [i], v) for i, v in sorted(h.items()) if v]
    terms += [("ZZ", [i, j], v) for (i, j), v in sorted(coupling.items()) if v]
    return SparsePauliOp.from_sparse_list(terms, num_qubits=qubo.num_variables).simplify()


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


def parse_sampler(task: dict[str, Any], default_shots: int) -> tuple[list[Any], int]:
    circuits = task.get("circuits")
    if not isinstance(circuits, list) or not circuits:
        raise TaskRefused("circuits is required for kind 'sampler': a list of OpenQASM programs")
    shots = _int_field(task, "shots", default_shots, 1, 1_000_000)
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


# --- the connector -----------------------------------------------------------------------------


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


class IbmConnector(BookedTasks, QuantumConnector):
    """IBM Quantum through qiskit-ibm-runtime: local fake backends or the real service."""

    Config = IbmConfig
    quantum: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("qubo", "sampler")

    def __init__(self, location: str, config: QuantumLocationConfig) -> None:
        super().__init__(location, config)
        self.cfg = cast(IbmConfig, config)
        self.backend_name = self.cfg.backend or DEFAULT_LOCAL_BACKEND
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
            if self.cfg.mode == "cloud" and self.cfg.token:
                self._token = resolve_secret(self.cfg.token)
            try:
                self._backend = await in_worker(self._open_backend)
            except MissingExtra:
                raise
            except Exception as exc:
                raise RuntimeError(
                    self._scrub(
                        f"QPU {self.location}: cannot open IBM backend {self.backend_name} "
                        f"({self.cfg.mode} mode): {type(exc).__name__}: {exc}"
                    )
                ) from None

    def _open_backend(self) -> Any:
        if self.cfg.mode == "local":
            module = import_extra("qiskit_ibm_runtime.fake_provider.local_service", "ibm", "ibm")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fake backends warn about their own values
                return module.QiskitRuntimeLocalService().backend(self.backend_name)
        runtime = import_extra("qiskit_ibm_runtime", "ibm", "ibm")
        service = runtime.QiskitRuntimeService(
            channel=self.cfg.channel, token=self._token, instance=self.cfg.instance
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
            optimization_level=self.cfg.optimization_level,
            seed_transpiler=seed,
        )
        task.note(f"transpiled for {self.backend_name}: depth {[c.depth() for c in transpiled]}")
        task.checkpoint()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # SamplerV2 in 0.50+
            sampler = SamplerV2(mode=backend)
            if self.cfg.mode == "local" and seed is not None:
                sampler.options.simulator.seed_simulator = seed
            began = time.perf_counter()
            job = sampler.run(transpiled, shots=shots)
        task.on_cancel = job.cancel if self.cfg.mode == "cloud" else None
        task.note(f"job {job.job_id()} submitted ({shots} shots)")
        result = job.result()
        task.on_cancel = None
        if self.cfg.mode == "local":
            task.qpu_seconds = time.perf_counter() - began
        else:
            task.qpu_seconds = _usage(job)
        task.checkpoint()
        return result

    def _run_qubo(self, task: BookTask, qubo: Qubo) -> dict[str, Any]:
        began = time.perf_counter()
        plan = plan_qaoa(qubo, self.cfg.reps)
        task.note(
            f"QAOA angles in {time.perf_counter() - began:.2f} s: gamma={list(plan.gammas)} "
            f"beta={list(plan.betas)} expected energy {plan.expected_energy}"
        )
        task.checkpoint()
        shots = self.cfg.shots
        result = self._sample(task, [qaoa_circuit(qubo, plan)], shots, qubo.seed)
        counts = counts_of(result[0])
        sample, energy, hits = best_of_counts(qubo, counts)
        return {
            "kind": "qubo",
            "best_sample": sample,
            "best_energy": energy,
            "solver": f"ibm:{self.backend_name}/qaoa",
            "num_reads": shots,
            "num_distinct": len(counts),
            "best_count": hits,
            "reps": self.cfg.reps,
            "gammas": list(plan.gammas),
            "betas": list(plan.betas),
        }

    def _run_sampler(self, task: BookTask, circuits: list[Any], shots: int) -> dict[str, Any]:
        result = self._sample(task, circuits, shots, None)
        return {
            "kind": "sampler",
            "counts": [counts_of(pub) for pub in result],
            "shots": shots,
            "solver": f"ibm:{self.backend_name}/sampler",
        }

    # -- the QuantumConnector contract ---------------------------------------------------------
    def check_task(self, task: dict[str, Any]) -> tuple[str, Work]:
        """Validate a task and return its kind and the work to run (raises TaskRefused)."""
        kind = task.get("kind", "qubo")
        qubits = self._require_started().num_qubits
        if kind == "qubo":
            qubo = parse_qubo(task)
            limit = min(self.cfg.max_variables, qubits)
            if qubo.num_variables > limit:
                why = (
                    f"{self.backend_name} has {qubits} qubits"
                    if qubits < self.cfg.max_variables
                    else f"max_variables is {self.cfg.max_variables}"
                )
                raise TaskRefused(
                    f"QPU {self.location}: the QUBO has {qubo.num_variables} variables, more "
                    f"than this QPU takes ({limit}: {why})"
                )
            return kind, lambda t: self._run_qubo(t, qubo)
        if kind == "sampler":
            circuits, shots = parse_sampler(task, self.cfg.shots)
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

    async def task_start(self, task: dict[str, Any], idempotency_key: str) -> str:
        existing = self.book.find(task, idempotency_key)
        if existing is not None:
            return existing.id
        kind, work = self.check_task(task)
        return self.book.submit(task, idempotency_key, kind, work).id

    async def status(self) -> QpuStatus:
        backend = self._require_started()
        running, pending = self.book.counts()
        if self.cfg.mode == "local":
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

    async def target(self) -> dict[str, Any]:
        backend = self._require_started()
        coupling = backend.coupling_map
        return {
            "backend": self.backend_name,
            "mode": self.cfg.mode,
            "num_qubits": backend.num_qubits,
            "basis_gates": sorted(backend.operation_names),
            "coupling_map": [list(e) for e in coupling.get_edges()] if coupling else None,
            "kinds": list(self.task_kinds),
            "max_variables": min(self.cfg.max_variables, backend.num_qubits),
        }

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "mode": self.cfg.mode,
            "backend": self.backend_name,
            "shots": self.cfg.shots,
            "reps": self.cfg.reps,
        }


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
