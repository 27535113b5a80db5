"""The QPU service emulator: one physical QPU behind a REST API, for tests and laptops.

It stands in for a QPU the way the papers' "quantum partition" did: tasks wait in a FIFO
queue and the QPU executes ONE at a time. Each backend adds a latency (superconducting-like:
sub-second, neutral-atom-like: minutes), multiplied by ``time_scale``, then the task is
really solved (a QUBO by simulated annealing in a worker thread, so the server keeps
answering while the "QPU" works). The QPU time a task is accounted is latency + solve.

The API (JSON under ``/v1``, a bearer token on every request) is described in
docs/emulator.md. Run it with ``qflow emulator --token-file FILE`` or
``python -m qflow.emulator``; inside a running event loop with
``runner, url = await start_emulator(token)`` and ``await stop_emulator(runner)``.

A new task kind is one function registered with :func:`task_kind`: it validates the task
body and returns the solver the worker thread runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from qflow.quantum import FINAL_STATES, TaskState

_logger = logging.getLogger("qflow.emulator")

TOKEN_ENV = "QFLOW_EMULATOR_TOKEN"
MAX_BODY_BYTES = 64 * 1024 * 1024
"""QUBOs of a few thousand variables with dense terms still fit."""
MAX_KEY_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class Backend:
    """A latency model: the fixed time a task costs on this kind of QPU before solving."""

    name: str
    latency_s: float
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("superconducting", 0.2, "superconducting-like: sub-second per task"),
        Backend("neutral-atom", 120.0, "neutral-atom-like: minutes per task"),
    )
}
DEFAULT_BACKEND = "superconducting"


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "code": code}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class BadTask(ApiError):
    """A task body the QPU cannot run: 400 with what is wrong and where."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_task", message)


# --- task kinds -------------------------------------------------------------------------------

Interrupted = Callable[[], bool]
Solver = Callable[[Interrupted], dict[str, Any]]
"""Runs in a worker thread; polls ``Interrupted`` to give up early once the task is cancelled."""
KindHandler = Callable[[dict[str, Any], str], Solver]
"""Validates a task's parameters (raises :class:`BadTask`) and returns its solver.

Gets the body without ``kind`` and ``backend``, and the backend name (for result labels).
"""

KINDS: dict[str, KindHandler] = {}


def task_kind(name: str) -> Callable[[KindHandler], KindHandler]:
    """Register a task kind: the one function a new kind needs."""

    def register(handler: KindHandler) -> KindHandler:
        KINDS[name] = handler
        return handler

    return register


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_field(
    params: dict[str, Any], key: str, default: int | None, low: int, high: int
) -> int | None:
    """An optional integer parameter within [low, high]; ``default`` when absent or null."""
    value = params.get(key)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise BadTask(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def _no_unknown(params: dict[str, Any], allowed: set[str], kind: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadTask(
            f"unknown field(s) for kind {kind!r}: {', '.join(unknown)} "
            f"(allowed: kind, backend, {', '.join(sorted(allowed))})"
        )


def _qubo_terms(terms: Any, n: int) -> list[tuple[int, int, float]]:
    """``[[i, j, value], ...]`` checked: integer indices in [0, n), finite values."""
    if not isinstance(terms, list):
        raise BadTask("qubo must be a list of [i, j, value] terms")
    checked = []
    for k, term in enumerate(terms):
        if not isinstance(term, list | tuple) or len(term) != 3:
            raise BadTask(f"qubo[{k}] must be a list [i, j, value], got {term!r}")
        i, j, value = term
        for name, index in (("i", i), ("j", j)):
            if not _is_int(index):
                raise BadTask(f"qubo[{k}]: index {name} must be an integer, got {index!r}")
            if not 0 <= index < n:
                raise BadTask(
                    f"qubo[{k}]: index {name}={index} is out of range for num_variables={n} "
                    f"(valid: 0 to {n - 1})"
                )
        if not _is_number(value):
            raise BadTask(f"qubo[{k}]: value must be a finite number, got {value!r}")
        checked.append((i, j, float(value)))
    return checked


@task_kind("qubo")
def qubo_task(params: dict[str, Any], backend: str) -> Solver:
    """A QUBO as ``[i, j, value]`` terms (i == j: linear), minimised by simulated annealing."""
    _no_unknown(params, {"qubo", "num_variables", "num_reads", "num_sweeps", "seed"}, "qubo")
    if params.get("num_variables") is None:
        raise BadTask("num_variables is required for kind 'qubo'")
    n = _int_field(params, "num_variables", None, 1, 100_000)
    reads = _int_field(params, "num_reads", 100, 1, 10_000)
    sweeps = _int_field(params, "num_sweeps", 1000, 1, 1_000_000)
    seed = _int_field(params, "seed", None, 0, 2**32 - 1)
    if "qubo" not in params:
        raise BadTask("qubo is required for kind 'qubo': a list of [i, j, value] terms")
    terms = _qubo_terms(params["qubo"], n)  # type: ignore[arg-type]

    def solve(interrupted: Interrupted) -> dict[str, Any]:
        import dimod
        from dwave.samplers import SimulatedAnnealingSampler

        bqm = dimod.BinaryQuadraticModel(n, dimod.BINARY)  # every variable, even unused ones
        bqm.add_linear_from((i, v) for i, j, v in terms if i == j)
        bqm.add_quadratic_from((i, j, v) for i, j, v in terms if i != j)
        sampleset = SimulatedAnnealingSampler().sample(
            bqm, num_reads=reads, num_sweeps=sweeps, seed=seed, interrupt_function=interrupted
        )
        best = sampleset.first
        return {
            "kind": "qubo",
            "best_sample": [int(best.sample[i]) for i in range(n)],  # type: ignore[arg-type]
            "best_energy": float(best.energy),
            "num_reads": len(sampleset),
            "solver": f"emulator:{backend}/simulated-annealing",
        }

    return solve


# --- fault injection --------------------------------------------------------------------------

FAULT_MODES = ("none", "http500", "hang", "reset", "malformed", "wrong_shape", "die_mid_task")
"""What the service can do wrong on purpose (docs/emulator.md, "Faults and retries")."""
DIE_EXIT_STATUS = 3
"""Exit status of an emulator killed by the ``die_mid_task`` fault."""
MALFORMED_BODY = b'{"id": "9c1e, "state": '
"""Answered with status 200 by the ``malformed`` fault: not JSON at all."""
WRONG_SHAPE_BODY = b'["valid JSON", "but not the object the API promises"]'
"""Answered with status 200 by the ``wrong_shape`` fault."""
ADMIN_PREFIX = "/v1/admin/"
"""Faults never apply here, so a test can always turn them off."""


@dataclasses.dataclass
class Faults:
    """The fault the service injects, and every request it saw (for tests to count).

    ``count`` requests are affected (``None``: all of them), only those whose path starts
    with ``paths`` and whose method is ``method`` when given. With ``after`` the real handler
    runs first, so the request takes effect (a task is created) and only its answer is lost
    or garbled: the worst case for a client, which cannot tell whether it took effect.
    """

    mode: str = "none"
    count: int | None = None
    paths: str | None = None
    method: str | None = None
    after: bool = False
    injected: int = 0
    requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    log: collections.deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )
    _release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r} (known: {', '.join(FAULT_MODES)})")
        if self.count is not None and not (_is_int(self.count) and self.count >= 0):
            raise ValueError(f"count must be an integer >= 0 or null, got {self.count!r}")
        if self.paths is not None and not (
            isinstance(self.paths, str) and self.paths.startswith("/")
        ):
            raise ValueError(f"paths must be a path prefix starting with /, got {self.paths!r}")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"method must be an HTTP method name, got {self.method!r}")
        if not isinstance(self.after, bool):
            raise ValueError(f"after must be true or false, got {self.after!r}")
        if self.method is not None:
            self.method = self.method.upper()

    def set(self, body: dict[str, Any]) -> None:
        """Replace the fault (``POST /v1/admin/faults``); requests that hang are let go."""
        unknown = sorted(set(body) - {"mode", "count", "paths", "method", "after"})
        if unknown:
            raise ApiError(400, "bad_faults", f"unknown field(s): {', '.join(unknown)}")
        new = dict(mode=body.get("mode", "none"), count=body.get("count"),
                   paths=body.get("paths"), method=body.get("method"),
                   after=body.get("after", False))  # fmt: skip
        old = {k: getattr(self, k) for k in new}
        for key, value in new.items():
            setattr(self, key, value)
        try:
            self.validate()
        except ValueError as exc:
            for key, value in old.items():
                setattr(self, key, value)
            raise ApiError(400, "bad_faults", str(exc)) from None
        self._release.set()
        self._release = asyncio.Event()
        _logger.warning("fault injection: %s", self.summary())

    def summary(self) -> str:
        if self.mode == "none":
            return "none"
        if self.mode == "die_mid_task":
            return "die_mid_task: the process exits while the next task runs"
        where = " ".join(x for x in (self.method, self.paths) if x) or "every request"
        times = "all of them" if self.count is None else f"the next {self.count}"
        return f"{self.mode} on {where} ({times}{', after handling' if self.after else ''})"

    def take(self, request: web.Request, route: str) -> str | None:
        """Count the request; the mode to inject into it, if the fault applies to it."""
        self.requests[route] += 1
        entry: dict[str, Any] = {"time": time.time(), "route": route, "fault": None}
        self.log.append(entry)
        if (
            self.mode in ("none", "die_mid_task")
            or request.path.startswith(ADMIN_PREFIX)
            or (self.paths is not None and not request.path.startswith(self.paths))
            or (self.method is not None and request.method != self.method)
            or self.count == 0
        ):
            return None
        if self.count is not None:
            self.count -= 1
        self.injected += 1
        entry["fault"] = self.mode
        return self.mode

    async def hang(self) -> None:
        """Never answer: until the fault is changed or the service stops."""
        await self._release.wait()

    def release(self) -> None:
        self._release.set()

    def describe(self, requests: bool = True) -> dict[str, Any]:
        """The fault; with ``requests``, also every request seen (``log``: the last 1000)."""
        described: dict[str, Any] = {
            "mode": self.mode,
            "count": self.count,
            "paths": self.paths,
            "method": self.method,
            "after": self.after,
            "injected": self.injected,
        }
        if requests:
            described.update(requests=dict(self.requests), log=list(self.log))
        return described


def _reset_connection(request: web.Request) -> None:
    """Drop the TCP connection with a RST (SO_LINGER 0), without an answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --- the QPU ----------------------------------------------------------------------------------


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(eq=False)
class Task:
    id: str
    kind: str
    backend: str
    solver: Solver
    fingerprint: str
    created: float
    state: TaskState = "queued"
    started: float | None = None
    ended: float | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    interrupted: threading.Event = dataclasses.field(default_factory=threading.Event)
    execution: asyncio.Task[None] | None = None

    def note(self, text: str) -> None:
        self.log.append(f"{_iso(time.time())} {text}")

    @property
    def qpu_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class QpuEmulator:
    """One physical QPU: a FIFO queue and a single worker coroutine that runs its tasks."""

    capacity = 1

    def __init__(
        self,
        backend: str = DEFAULT_BACKEND,
        time_scale: float = 1.0,
        offline: bool = False,
        faults: Faults | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if not (math.isfinite(time_scale) and time_scale >= 0):
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale}")
        self.backend = backend
        self.time_scale = time_scale
        self.tasks: dict[str, Task] = {}
        self.completed = 0
        self._pending: collections.deque[Task] = collections.deque()
        self._by_key: dict[str, Task] = {}
        self._executed: list[Task] = []
        self._running: Task | None = None
        self._online = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self.faults = faults or Faults()
        if not offline:
            self._online.set()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker on the running loop."""
        self._worker = asyncio.create_task(self._work(), name="qflow-emulator-qpu")

    @staticmethod
    def _warm_up() -> None:
        """Import the solvers before the first task, so its QPU time is not an import."""
        import dimod  # noqa: F401
        from dwave.samplers import SimulatedAnnealingSampler  # noqa: F401

    async def stop(self) -> None:
        """Stop the worker; a running task ends cancelled, queued ones stay queued."""
        self._stopping = True
        if self._running is not None:
            self._running.interrupted.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait({self._worker})

    @property
    def online(self) -> bool:
        return self._online.is_set()

    def set_online(self, online: bool) -> None:
        """Offline: new tasks are refused and the queue is paused (a running task finishes)."""
        if online:
            self._online.set()
        else:
            self._online.clear()
        _logger.info("QPU is now %s", "online" if online else "offline")

    # -- tasks ---------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any], key: str | None) -> tuple[Task, bool]:
        """Queue a task; returns it and whether it is new (False: same idempotency key)."""
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key is not None and key in self._by_key:
            existing = self._by_key[key]
            if existing.fingerprint != fingerprint:
                raise ApiError(
                    422,
                    "idempotency_conflict",
                    "Idempotency-Key was already used for a different task body; "
                    "use a new key for a new task",
                )
            return existing, False
        if not self.online:
            raise ApiError(503, "offline", "the QPU is offline and accepts no tasks")
        kind, backend, solver = self._validate(body)
        task = Task(
            id=uuid.uuid4().hex,
            kind=kind,
            backend=backend,
            solver=solver,
            fingerprint=fingerprint,
            created=time.time(),
        )
        self.tasks[task.id] = task
        if key is not None:
            self._by_key[key] = task
        self._pending.append(task)
        task.note(f"queued: kind {kind}, backend {backend}, position {len(self._pending)}")
        _logger.info("task %s queued (%s on %s)", task.id, kind, backend)
        self._wakeup.set()
        return task, True

    def _validate(self, body: dict[str, Any]) -> tuple[str, str, Solver]:
        params = dict(body)
        kind = params.pop("kind", None)
        if kind not in KINDS:
            raise BadTask(f"unknown task kind {kind!r} (supported: {', '.join(sorted(KINDS))})")
        backend = params.pop("backend", None) or self.backend
        if backend not in BACKENDS:
            raise BadTask(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        return kind, backend, KINDS[kind](params, backend)

    def with_key(self, key: str) -> list[Task]:
        """The task submitted with idempotency key ``key`` ([] if none was)."""
        return [self._by_key[key]] if key in self._by_key else []

    def get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        return task

    def position(self, task: Task) -> int | None:
        """1 for the next task to run, None when the task is not waiting."""
        if task.state != "queued":
            return None
        return self._pending.index(task) + 1

    async def cancel(self, task: Task) -> None:
        """Cancel a queued or running task; a task that has ended stays as it is."""
        if task.state == "queued":
            self._pending.remove(task)
            self._finish(task, "cancelled", "cancelled while queued")
        elif task.state == "running" and task.execution is not None:
            task.interrupted.set()
            task.execution.cancel()
            await asyncio.wait({task.execution})
            if task.state not in FINAL_STATES:  # cancelled before its coroutine ran
                self._finish(task, "cancelled", self._cancel_reason())

    def describe(self, task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "kind": task.kind,
            "backend": task.backend,
            "state": task.state,
            "queue_position": self.position(task),
            "created": task.created,
            "started": task.started,
            "ended": task.ended,
            "qpu_seconds": task.qpu_seconds,
            "message": task.message,
        }

    # -- the worker ----------------------------------------------------------------------------
    async def _next(self) -> Task:
        while True:
            await self._online.wait()
            if self._pending:
                return self._pending.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _work(self) -> None:
        """Run tasks one at a time, in submission order."""
        await asyncio.to_thread(self._warm_up)
        while True:
            task = await self._next()
            self._begin(task)  # no await since it left the queue: never seen "in between"
            task.execution = asyncio.create_task(self._execute(task))
            try:
                await asyncio.wait({task.execution})
            except asyncio.CancelledError:
                task.interrupted.set()
                task.execution.cancel()
                await asyncio.wait({task.execution})
                raise
            finally:
                self._running = None
                if task.state not in FINAL_STATES:  # cancelled before its coroutine ran
                    self._finish(task, "cancelled", self._cancel_reason())

    def _begin(self, task: Task) -> None:
        task.state = "running"
        task.started = time.time()
        self._running = task
        self._executed.append(task)
        latency = BACKENDS[task.backend].latency_s * self.time_scale
        task.note(f"started on {task.backend} (latency {latency:.3f} s)")
        _logger.info("task %s started", task.id)
        if self.faults.mode == "die_mid_task":
            asyncio.get_running_loop().call_later(latency / 2, self._die, task)

    def arm_death(self) -> None:
        """``die_mid_task`` set while a task runs: die during that one (after answering)."""
        if self.faults.mode == "die_mid_task" and self._running is not None:
            asyncio.get_running_loop().call_later(0.1, self._die, self._running)

    def _die(self, task: Task) -> None:
        """The ``die_mid_task`` fault: the process exits at once, as in a crash."""
        if self.faults.mode != "die_mid_task" or task.state != "running":
            return
        _logger.warning("fault injection: the QPU dies while task %s runs", task.id)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(DIE_EXIT_STATUS)

    def _cancel_reason(self) -> str:
        return "emulator stopped" if self._stopping else "cancelled while running"

    async def _execute(self, task: Task) -> None:
        try:
            await asyncio.sleep(BACKENDS[task.backend].latency_s * self.time_scale)
            result = await asyncio.to_thread(task.solver, task.interrupted.is_set)
        except asyncio.CancelledError:
            self._finish(task, "cancelled", self._cancel_reason())
            raise
        except Exception as exc:  # noqa: BLE001 - a solver failure is the task's failure
            self._finish(task, "failed", f"{type(exc).__name__}: {exc}")
            return
        task.result = result
        self.completed += 1
        energy = result.get("best_energy")
        self._finish(task, "completed", None if energy is None else f"best energy {energy:g}")

    def _finish(self, task: Task, state: TaskState, message: str | None) -> None:
        task.state = state
        task.message = message
        task.ended = time.time()
        task.note(f"{state}" + (f": {message}" if message else ""))
        _logger.info("task %s %s", task.id, state)

    # -- reports -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "capacity": self.capacity,
            "running": 0 if self._running is None else 1,
            "pending": len(self._pending),
            "default_backend": self.backend,
            "time_scale": self.time_scale,
            "task_seconds": BACKENDS[self.backend].latency_s * self.time_scale,
            "kinds": sorted(KINDS),
            "backends": {
                b.name: {
                    "latency_s": b.latency_s,
                    "scaled_latency_s": b.latency_s * self.time_scale,
                    "description": b.description,
                }
                for b in BACKENDS.values()
            },
            "tasks_completed": self.completed,
        }

    def stats(self) -> dict[str, Any]:
        """Every task the QPU executed to an end, in start order, and how busy it was."""
        ran = [t for t in self._executed if t.ended is not None and t.started is not None]
        return {
            "tasks": [
                {
                    "id": t.id,
                    "state": t.state,
                    "backend": t.backend,
                    "started": t.started,
                    "ended": t.ended,
                }
                for t in ran
            ],
            "tasks_completed": self.completed,
            "busy_seconds": sum(t.qpu_seconds or 0.0 for t in ran),
            "first_start": min((t.started for t in ran), default=None),  # type: ignore[type-var]
            "last_end": max((t.ended for t in ran), default=None),  # type: ignore[type-var]
        }


# --- HTTP -------------------------------------------------------------------------------------

EMULATOR = web.AppKey("emulator", QpuEmulator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as a JSON body ``{"error", "code"}``, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)


def _auth(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            response = _error(401, "unauthorized", "missing or invalid bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="qflow-emulator"'
            return response
        return await handler(request)

    return check


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return body


def _qpu(request: web.Request) -> QpuEmulator:
    return request.app[EMULATOR]


def _route(request: web.Request) -> str:
    """``METHOD /path/{id}``: the route a request matched (its path when none did)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else request.path}"


@web.middleware
async def _inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The configured fault, for the requests it applies to (never ``/v1/admin/*``)."""
    faults = _qpu(request).faults
    mode = faults.take(request, _route(request))
    if mode is None:
        return await handler(request)
    _logger.warning("fault injection: %s on %s %s", mode, request.method, request.path)
    if faults.after:
        with contextlib.suppress(ApiError, web.HTTPException):
            await handler(request)
    if mode == "hang":
        await faults.hang()
        return _error(503, "injected_fault", "injected fault: the hang was released")
    if mode == "reset":
        _reset_connection(request)
        return web.Response(status=204)  # never sent: the connection is gone
    if mode == "malformed":
        return web.Response(body=MALFORMED_BODY, content_type="application/json")
    if mode == "wrong_shape":
        return web.Response(body=WRONG_SHAPE_BODY, content_type="application/json")
    return _error(500, "injected_fault", "injected fault: internal server error")


async def _h_submit(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ApiError(400, "bad_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} chars")
    qpu = _qpu(request)
    task, created = qpu.submit(await _json_body(request), key)
    return web.json_response(qpu.describe(task), status=201 if created else 200)


async def _h_task(request: web.Request) -> web.Response:
    qpu = _qpu(request)
    return web.json_response(qpu.describe(qpu.get(request.match_info["id"])))


async def _h_tasks(request: web.Request) -> web.Response:
    """Every task the QPU knows (``?idempotency_key=K``: the one submitted with K, if any)."""
    qpu = _qpu(request)
    key = request.query.get("idempotency_key")
    tasks = qpu.tasks.values() if key is None else qpu.with_key(key)
    return web.json_response({"tasks": [qpu.describe(t) for t in tasks]})


async def _h_result(request: web.Request) -> web.Response:
    task = _qpu(request).get(request.match_info["id"])
    if task.state != "completed" or task.result is None:
        detail = f" ({task.message})" if task.state in FINAL_STATES and task.message else ""
        raise ApiError(
            409,
            "not_completed",
            f"task {task.id} is {task.state}{detail}; a result exists once it is completed",
            state=task.state,
        )
    return web.json_response(task.result)


async def _h_cancel(request: web.Request) -> web.Response:
    qpu = _qpu(request)
    task = qpu.get(request.match_info["id"])
    await qpu.cancel(task)
    return web.json_response(qpu.describe(task))


async def _h_logs(request: web.Request) -> web.Response:
    task = _qpu(request).get(request.match_info["id"])
    return web.Response(text="".join(f"{line}\n" for line in task.log))


async def _h_status(request: web.Request) -> web.Response:
    return web.json_response(_qpu(request).status())


async def _h_stats(request: web.Request) -> web.Response:
    return web.json_response(_qpu(request).stats())


def _h_online(online: bool) -> Handler:
    async def toggle(request: web.Request) -> web.Response:
        _qpu(request).set_online(online)
        return web.json_response({"online": online})

    return toggle


async def _h_get_faults(request: web.Request) -> web.Response:
    return web.json_response(_qpu(request).faults.describe())


async def _h_set_faults(request: web.Request) -> web.Response:
    qpu = _qpu(request)
    qpu.faults.set(await _json_body(request))
    qpu.arm_death()
    return web.json_response(qpu.faults.describe(requests=False))


def create_app(token: str, emulator: QpuEmulator) -> web.Application:
    """The aiohttp application; the emulator's worker runs while the app is set up."""
    if not token:
        raise ValueError("the emulator needs a non-empty token: authentication is mandatory")
    app = web.Application(
        middlewares=[_json_errors, _auth(token), _inject_faults], client_max_size=MAX_BODY_BYTES
    )
    app[EMULATOR] = emulator
    app.add_routes(
        [
            web.post("/v1/tasks", _h_submit),
            web.get("/v1/tasks", _h_tasks),
            web.get("/v1/tasks/{id}", _h_task),
            web.get("/v1/tasks/{id}/result", _h_result),
            web.post("/v1/tasks/{id}/cancel", _h_cancel),
            web.get("/v1/tasks/{id}/logs", _h_logs),
            web.get("/v1/status", _h_status),
            web.get("/v1/stats", _h_stats),
            web.post("/v1/admin/offline", _h_online(False)),
            web.post("/v1/admin/online", _h_online(True)),
            web.get("/v1/admin/faults", _h_get_faults),
            web.post("/v1/admin/faults", _h_set_faults),
        ]
    )

    async def start_worker(app: web.Application) -> None:
        await app[EMULATOR].start()

    async def stop_worker(app: web.Application) -> None:
        await app[EMULATOR].stop()

    async def release_hung(app: web.Application) -> None:
        app[EMULATOR].faults.release()  # requests held by the "hang" fault end

    app.on_startup.append(start_worker)
    app.on_shutdown.append(release_hung)
    app.on_cleanup.append(stop_worker)
    return app


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_emulator(
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    backend: str = DEFAULT_BACKEND,
    time_scale: float = 1.0,
    offline: bool = False,
    faults: Faults | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve an emulator on the running loop; returns its runner (for :func:`stop_emulator`)
    and its URL. ``port=0`` picks a free port; ``faults``: start misbehaving."""
    emulator = QpuEmulator(backend, time_scale, offline, faults)
    runner = web.AppRunner(create_app(token, emulator), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, _url(runner)


async def stop_emulator(runner: web.AppRunner) -> None:
    """Stop serving and stop the QPU worker (a running task ends cancelled)."""
    await runner.cleanup()


def emulator_of(runner: web.AppRunner) -> QpuEmulator:
    """The emulator behind a runner from :func:`start_emulator` (for in-process tests)."""
    return runner.app[EMULATOR]


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str = "",
    backend: str = DEFAULT_BACKEND,
    time_scale: float = 1.0,
    offline: bool = False,
    faults: Faults | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; the first stdout line is the URL (for ``--port 0``)."""

    async def run() -> None:
        runner, url = await start_emulator(token, host, port, backend, time_scale, offline, faults)
        print(f"qflow emulator listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await stop_emulator(runner)

    asyncio.run(run())


def port_number(text: str) -> int:
    """argparse ``type`` of ``--port``: a bad port is a usage error, before anything binds."""
    try:
        port: int | None = int(text)
    except ValueError:
        port = None
    if port is None or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: give an integer from 0 to 65535 (0 picks a free port)"
        )
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qflow emulator",
        description="A QPU service emulator: one QPU, tasks run one at a time, REST API "
        "under /v1 with a mandatory bearer token.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=port_number, default=0, help="port; 0 picks a free one")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--token", help=f"bearer token (visible in ps: prefer --token-file or ${TOKEN_ENV})"
    )
    secret.add_argument("--token-file", help="file whose content is the bearer token")
    parser.add_argument(
        "--backend", choices=sorted(BACKENDS), default=DEFAULT_BACKEND, help="default backend"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="factor on every backend latency"
    )
    parser.add_argument(
        "--offline", action="store_true", help="start offline (POST /v1/admin/online)"
    )
    fault = parser.add_argument_group(
        "fault injection", "start misbehaving (change it later with POST /v1/admin/faults)"
    )
    fault.add_argument("--faults", choices=FAULT_MODES, default="none", help="fault mode")
    fault.add_argument(
        "--fault-count", type=int, default=None, help="requests affected (default: all)"
    )
    fault.add_argument("--fault-paths", help="only requests whose path starts with this")
    fault.add_argument("--fault-method", help="only requests with this HTTP method")
    fault.add_argument(
        "--fault-after",
        action="store_true",
        help="handle the request first (it takes effect), then lose or garble the answer",
    )
    return parser


def _token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            parser.error(f"cannot read --token-file {args.token_file}: {exc.strerror}")
    else:
        token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        parser.error(
            f"a token is required: --token-file FILE, --token TOKEN or ${TOKEN_ENV} "
            "(authentication is mandatory)"
        )
    return token


def main(argv: list[str] | None = None) -> int:
    """``qflow emulator``: serve a QPU emulator until SIGINT/SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    token = _token(parser, args)
    if not (math.isfinite(args.time_scale) and args.time_scale >= 0):
        parser.error("--time-scale must be a finite number >= 0")
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        faults = Faults(args.faults, args.fault_count, args.fault_paths, args.fault_method,
                        args.fault_after)  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    _logger.setLevel(logging.INFO)  # task events on stderr, even under qflow's WARNING root
    try:
        serve(args.host, args.port, token, args.backend, args.time_scale, args.offline, faults)
    except OSError as exc:
        print(f"qflow emulator: error: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
