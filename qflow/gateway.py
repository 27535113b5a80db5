"""The QPU gateway: virtual-QPU leases, per-step tokens, credentials kept on this side.

One gateway serves the quantum locations of a deployment. It is embedded in ``qflow run``
by default, or run site-wide (``qflow gateway``) so several runs share one QPU.

* Orchestrators (admin token) take a **lease** on a location: one of its ``vqpus`` slots,
  waited for at most ``max_wait`` seconds, refused at once when the QPU is unreachable or
  reports itself offline. A lease comes with a fresh step token.
* A step's client command (step token only, never the vendor key) submits tasks, reads
  their state and results through the gateway; the gateway forwards them to the location's
  quantum connector, which holds the vendor credentials.
* Releasing a lease revokes its token, stops its unfinished tasks and returns the
  QPU-seconds its tasks used.

The step-facing API has the emulator's shape (``/v1/tasks``, ``/v1/status``), so a client
talks to a gateway or to a bare QPU service the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hmac
import logging
import secrets
import signal
import sys
import time
from typing import Any

from aiohttp import web

from qflow.quantum import FINAL_STATES, QpuStatus, QuantumConnector, TaskInfo
from qflow.rundir.journal import NO_JOURNAL, Journal, Resource
from qflow.secrets import redact

_logger = logging.getLogger("qflow.gateway")


class LeaseRefused(Exception):
    """No slot for the step: the reason says why (offline, unreachable, busy too long)."""

    def __init__(self, reason: str, *, busy: bool = False) -> None:
        super().__init__(reason)
        self.busy = busy
        """True when the QPU works but no virtual QPU became free in time."""


REQUEST_TIMEOUT_S = 10.0
"""Longest wait for one call to a QPU (its status, stopping a task): a QPU that hangs costs a
lease request at most this on top of its ``max_wait``, and a release at most this."""
ACCOUNTING_TIMEOUT_S = 2.0
"""Longest wait, once a lease's tasks are stopped, for their final state (QPU time)."""
WITHDRAWN_KEPT = 10_000
"""How many withdrawn lease keys are remembered (a lease asked for after its withdrawal)."""


@dataclasses.dataclass
class GatewayTask:
    """A task a step started through its lease."""

    qpu_id: str
    submitted: float
    resource: Resource
    """Its journal record (the task may outlive this process at the QPU's vendor)."""
    info: TaskInfo | None = None
    """The last state read from the QPU."""
    accounted: bool = False
    stopped: float | None = None

    @property
    def final(self) -> bool:
        return self.info is not None and self.info.state in FINAL_STATES


@dataclasses.dataclass(frozen=True)
class TaskSummary:
    """How one task of a lease ended, for the step's record."""

    state: str
    message: str | None
    submitted: float
    started: float | None
    ended: float | None
    qpu_seconds: float


@dataclasses.dataclass(frozen=True)
class LeaseSummary:
    """What a released lease's tasks used and how they ended."""

    qpu_seconds: float
    tasks: list[TaskSummary]
    notes: list[str]
    """What could not be known exactly (a QPU time estimated, a task that would not stop)."""

    def failure(self) -> str | None:
        """Why the lease's work failed, in the QPU's words (None: nothing went wrong)."""
        reasons = [
            f"task {task.state}: {task.message or 'no reason given'}"
            for task in self.tasks
            if task.state in ("failed", "cancelled")
        ]
        return "; ".join(reasons + self.notes) or None

    def queue_seconds(self) -> float:
        """Time the tasks waited in the QPU's queue (their own execution excluded)."""
        return sum(max(0.0, t.started - t.submitted) for t in self.tasks if t.started)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseSummary:
        tasks = [TaskSummary(**t) for t in data.get("tasks", [])]
        return cls(float(data["qpu_seconds"]), tasks, list(data.get("notes", [])))


@dataclasses.dataclass
class Lease:
    id: str
    location: str
    step: str
    token: str
    granted: float
    tasks: dict[str, GatewayTask] = dataclasses.field(default_factory=dict)
    """Gateway task id -> the task."""
    qpu_seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> LeaseSummary:
        tasks = [
            TaskSummary(
                state=t.info.state if t.info else "unknown",
                message=t.info.message if t.info else None,
                submitted=t.submitted,
                started=t.info.started if t.info else None,
                ended=t.info.ended if t.info else None,
                qpu_seconds=_task_seconds(t.info) or 0.0,
            )
            for t in self.tasks.values()
        ]
        return LeaseSummary(self.qpu_seconds, tasks, list(self.notes))


def _task_seconds(info: TaskInfo | None) -> float | None:
    """The QPU time of a final task: the vendor's figure, else its start to end."""
    if info is None:
        return None
    if info.qpu_seconds is not None:
        return info.qpu_seconds
    if info.started is not None and info.ended is not None:
        return max(0.0, info.ended - info.started)
    return None


class QpuSlots:
    """The virtual-QPU slots of one location: at most ``vqpus`` leases at a time."""

    def __init__(self, connector: QuantumConnector) -> None:
        self.connector = connector
        self.free = connector.config.vqpus
        self.waiting = 0
        self._changed = asyncio.Condition()
        self.granted = self.refused = self.most_held = 0
        """Counters for ``GET /v1/stats``: leases granted, refused, most held at once."""
        self.holds: collections.deque[float] = collections.deque(maxlen=50)
        """How long recent leases were held (for estimates of when a slot frees)."""
        self.task_seconds: collections.deque[float] = collections.deque(maxlen=50)
        """QPU time of recent tasks (the QPU's measured service time)."""

    async def take(self, max_wait: float) -> None:
        async with self._changed:
            self.waiting += 1
            try:
                if self.free <= 0:  # (wait_for with a timeout of 0 never runs the wait)
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.free > 0), max_wait)
            except TimeoutError:
                raise LeaseRefused(
                    f"no virtual QPU of {self.connector.location} became free within "
                    f"{max_wait:g} s",
                    busy=True,
                ) from None
            finally:
                self.waiting -= 1
            self.free -= 1
            self.granted += 1
            self.most_held = max(self.most_held, self.connector.config.vqpus - self.free)

    async def give_back(self, held_for: float | None = None) -> None:
        async with self._changed:
            self.free += 1
            if held_for is not None:
                self.holds.append(held_for)
            self._changed.notify()

    def stats(self) -> dict[str, int]:
        vqpus = self.connector.config.vqpus
        return {
            "vqpus": vqpus,
            "free": self.free,
            "held": vqpus - self.free,
            "most_held": self.most_held,
            "granted": self.granted,
            "refused": self.refused,
        }


class Gateway:
    """Leases and task forwarding for a set of quantum connectors (runs on one event loop).

    ``journal``: where the QPU tasks it starts are recorded before they exist (the run's
    journal when the gateway is embedded in ``qflow run``): a crashed run's tasks are then
    stopped at the QPU by ``qflow run --resume`` or ``qflow clean``.
    """

    def __init__(
        self,
        connectors: dict[str, QuantumConnector],
        admin_token: str,
        journal: Journal = NO_JOURNAL,
    ) -> None:
        self.connectors = connectors
        self.admin_token = admin_token
        self.journal = journal
        self.slots = {name: QpuSlots(c) for name, c in connectors.items()}
        self.leases: dict[str, Lease] = {}
        self._by_token: dict[str, Lease] = {}
        self._withdrawn: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._started: set[str] = set()
        self._start_lock = asyncio.Lock()
        self.request_times = RequestTimes()

    # -- leases ---------------------------------------------------------------------------
    async def _connector(self, location: str) -> QuantumConnector:
        connector = self.connectors[location]
        async with self._start_lock:
            if location not in self._started:
                await connector.start()
                self._started.add(location)
        return connector

    async def lease(
        self, location: str, step: str, max_wait: float, key: str | None = None
    ) -> Lease:
        """A virtual QPU of ``location`` within ``max_wait`` (+ one status request).

        ``key`` (chosen by the caller, who journals it first) makes the request idempotent
        and lets :meth:`withdraw` end it whether it was granted yet or not.
        """
        if location not in self.connectors:
            raise KeyError(location)
        if key is not None and key in self.leases:
            return self.leases[key]
        slots = self.slots[location]
        try:
            self._refuse_withdrawn(key)
            await self._check_online(location)
            await slots.take(max_wait)
        except LeaseRefused as exc:
            if not (exc.busy and max_wait == 0):  # a probe for a free vQPU is no refusal
                slots.refused += 1
            raise
        if key is not None and key in self._withdrawn:  # withdrawn while it waited
            await slots.give_back()
            self._refuse_withdrawn(key)
        lease = Lease(
            id=key or secrets.token_hex(8),
            location=location,
            step=step,
            token=secrets.token_urlsafe(24),
            granted=time.time(),
        )
        self.leases[lease.id] = lease
        self._by_token[lease.token] = lease
        return lease

    def _refuse_withdrawn(self, key: str | None) -> None:
        if key is not None and key in self._withdrawn:
            raise LeaseRefused(f"lease {key} was withdrawn by its requester")

    async def _check_online(self, location: str) -> None:
        status = await self._status(location)
        if not status.online:
            detail = f" ({status.detail})" if status.detail else ""
            raise LeaseRefused(f"QPU {location} reports itself offline{detail}")

    async def _status(self, location: str) -> QpuStatus:
        """The QPU's status within one request timeout; LeaseRefused saying why not."""
        connector = await self._connector(location)
        try:
            return await asyncio.wait_for(connector.status(), REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise LeaseRefused(
                f"QPU {location} did not answer its status request within {REQUEST_TIMEOUT_S:g} s"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any failure to reach it is a refusal
            raise LeaseRefused(f"QPU {location} is unreachable: {exc}") from None

    async def release(self, lease_id: str) -> LeaseSummary:
        """End a lease: its slot is free at once, its token dies, its unfinished tasks are
        stopped (by id, even when their state cannot be read), their QPU time accounted."""
        lease = self.leases.pop(lease_id)
        self._by_token.pop(lease.token, None)
        await self.slots[lease.location].give_back(time.time() - lease.granted)
        unfinished = [t for t in lease.tasks.values() if not t.final]
        await asyncio.gather(*(self._stop(lease, t) for t in unfinished))
        await asyncio.gather(*(self._account(lease, t) for t in lease.tasks.values()))
        return lease.summary()

    async def withdraw(self, key: str) -> LeaseSummary | None:
        """Release a lease by its key, or make sure it is never granted (a requester that
        crashed while it waited); None if no lease had it yet."""
        if key in self.leases:
            return await self.release(key)
        self._withdrawn[key] = None
        while len(self._withdrawn) > WITHDRAWN_KEPT:
            self._withdrawn.popitem(last=False)
        return None

    async def _stop(self, lease: Lease, task: GatewayTask) -> None:
        connector = self.connectors[lease.location]
        try:
            await asyncio.wait_for(connector.task_stop(task.qpu_id), REQUEST_TIMEOUT_S)
            task.stopped = time.time()
        except Exception as exc:  # noqa: BLE001 - the others must still be stopped
            why = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            lease.notes.append(f"task {task.qpu_id} could not be stopped ({why})")
            _logger.warning("releasing lease of %s: stopping task %s: %s", lease.step,
                            task.qpu_id, why)  # fmt: skip

    async def _account(self, lease: Lease, task: GatewayTask) -> None:
        """Read a task's final state once (bounded); estimate its QPU time if unreadable."""
        if task.accounted:
            return
        with contextlib.suppress(Exception):  # unreadable: estimated below
            await asyncio.wait_for(self._refresh(lease, task), ACCOUNTING_TIMEOUT_S)
        if task.accounted:
            return
        if task.stopped is not None:
            self.journal.ended(task.resource)  # the QPU accepted the stop
        begin = task.info.started if task.info and task.info.started else task.submitted
        end = task.stopped or time.time()
        lease.qpu_seconds += max(0.0, end - begin)
        task.accounted = True
        lease.notes.append(
            f"QPU time of task {task.qpu_id} estimated from its "
            f"{'start' if task.info and task.info.started else 'submission'} to its stop: "
            "its state could not be read"
        )

    async def _refresh(self, lease: Lease, task: GatewayTask) -> TaskInfo:
        """Current state of a task; accounts its QPU-seconds once it is final."""
        info = await self.connectors[lease.location].task_status(task.qpu_id)
        task.info = info
        if info.state in FINAL_STATES and not task.accounted:
            task.accounted = True
            self.journal.ended(task.resource)
            seconds = _task_seconds(info)
            if seconds is not None:
                lease.qpu_seconds += seconds
                self.slots[lease.location].task_seconds.append(seconds)
        return info

    async def start_task(self, lease: Lease, task: dict[str, Any], key: str) -> str:
        """Start a step's task at the QPU (idempotent per key); returns the gateway's id."""
        gw_id = f"{lease.id}-{key}"
        if gw_id in lease.tasks:
            return gw_id
        connector = self.connectors[lease.location]
        vendor_key = gw_id
        resource = self.journal.intend(
            "qpu-task", lease.location, {"idempotency_key": vendor_key}, step=lease.step
        )
        submitted = time.time()
        try:
            qpu_id = await connector.task_start(task, vendor_key)
        except BaseException as exc:
            found = await _quietly(connector.task_lookup(vendor_key))
            if found is None:
                self.journal.ended(resource)
                if isinstance(exc, Exception):  # the step fails; the record says why
                    lease.notes.append(f"task refused: {redact(str(exc))}")
                raise
            qpu_id = found
        lease.tasks[gw_id] = GatewayTask(qpu_id, submitted, self.journal.exists(resource, qpu_id))
        return gw_id

    async def info(self, location: str) -> dict[str, Any]:
        """What placement needs to estimate when a step could start here and how long one
        task takes: the vQPU slots, the QPU's own queue, measured task and lease times."""
        slots = self.slots[location]
        now = time.time()
        held_for = [now - lease.granted for lease in self.leases.values()
                    if lease.location == location]  # fmt: skip
        answer: dict[str, Any] = {
            "vqpus": self.connectors[location].config.vqpus,
            "free": slots.free,
            "waiting": slots.waiting,
            "held_for": held_for,
            "mean_hold_s": _mean(slots.holds),
            "mean_task_s": _mean(slots.task_seconds),
        }
        try:
            status = await self._status(location)
        except LeaseRefused as exc:
            return {**answer, "online": False, "detail": str(exc)}
        return {**answer, **dataclasses.asdict(status)}

    # -- HTTP ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.request_times.middleware, _errors_as_json])
        app.add_routes(
            [
                web.get("/v1/stats", self._h_stats),
                web.post("/v1/leases", self._h_lease),
                web.delete("/v1/leases/{id}", self._h_release),
                web.get("/v1/locations/{name}", self._h_info),
                web.get("/v1/status", self._h_status),
                web.post("/v1/tasks", self._h_submit),
                web.get("/v1/tasks/{id}", self._h_task),
                web.get("/v1/tasks/{id}/result", self._h_result),
                web.post("/v1/tasks/{id}/cancel", self._h_cancel),
                web.get("/v1/tasks/{id}/logs", self._h_logs),
            ]
        )
        return app

    def _admin(self, request: web.Request) -> None:
        if not hmac.compare_digest(_bearer(request), self.admin_token):
            raise web.HTTPUnauthorized(reason="admin token required")

    def _step(self, request: web.Request) -> Lease:
        lease = self._by_token.get(_bearer(request))
        if lease is None:
            raise web.HTTPUnauthorized(reason="unknown or expired step token")
        return lease

    async def _h_stats(self, request: web.Request) -> web.Response:
        """Admin: how long requests took (per route) and the leases of each location."""
        self._admin(request)
        return web.json_response(
            {
                "requests": self.request_times.summary(),
                "step_requests": self.request_times.summary(STEP_ROUTES),
                "locations": {name: slots.stats() for name, slots in self.slots.items()},
            }
        )

    async def _h_lease(self, request: web.Request) -> web.Response:
        self._admin(request)
        body = await _json_object(request)
        key = body.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise web.HTTPBadRequest(reason="key must be a string of 1 to 128 characters")
        try:
            lease = await self.lease(
                str(body["location"]),
                str(body.get("step", "")),
                float(body.get("max_wait", 0)),
                key,
            )
        except KeyError:
            raise web.HTTPNotFound(reason=f"no quantum location {body.get('location')!r}") from None
        except LeaseRefused as exc:
            return web.json_response({"error": str(exc), "busy": exc.busy}, status=503)
        return web.json_response({"lease": lease.id, "token": lease.token}, status=201)

    async def _h_release(self, request: web.Request) -> web.Response:
        """Admin: release a lease by id (its key when the requester chose one); an unknown
        id is withdrawn, so that a request still waiting for it is never granted."""
        self._admin(request)
        summary = await self.withdraw(request.match_info["id"])
        if summary is None:
            raise web.HTTPNotFound(reason="no such lease (withdrawn: it will not be granted)")
        return web.json_response({**summary.as_json(), "states": [t.state for t in summary.tasks]})

    async def _h_info(self, request: web.Request) -> web.Response:
        self._admin(request)
        name = request.match_info["name"]
        if name not in self.connectors:
            raise web.HTTPNotFound(reason=f"no quantum location {name!r}")
        return web.json_response(await self.info(name))

    async def _h_status(self, request: web.Request) -> web.Response:
        lease = self._step(request)
        status = await self.connectors[lease.location].status()
        return web.json_response(dataclasses.asdict(status))

    async def _h_submit(self, request: web.Request) -> web.Response:
        lease = self._step(request)
        task = await _json_object(request)
        key = request.headers.get("Idempotency-Key") or secrets.token_hex(8)
        gw_id = await self.start_task(lease, task, key)
        return web.json_response({"id": gw_id, "state": "queued"}, status=201)

    def _task(self, request: web.Request) -> tuple[Lease, GatewayTask, str]:
        lease = self._step(request)
        gw_id = request.match_info["id"]
        if gw_id not in lease.tasks:
            raise web.HTTPNotFound(reason="no such task for this step")
        return lease, lease.tasks[gw_id], gw_id

    async def _h_task(self, request: web.Request) -> web.Response:
        lease, task, gw_id = self._task(request)
        info = await self._refresh(lease, task)
        return web.json_response({**dataclasses.asdict(info), "id": gw_id})

    async def _h_result(self, request: web.Request) -> web.Response:
        lease, task, _ = self._task(request)
        info = await self._refresh(lease, task)
        if info.state != "completed":
            return web.json_response({"error": f"task is {info.state}"}, status=409)
        result = await self.connectors[lease.location].task_result(task.qpu_id)
        return web.json_response(result)

    async def _h_cancel(self, request: web.Request) -> web.Response:
        lease, task, gw_id = self._task(request)
        await self.connectors[lease.location].task_stop(task.qpu_id)
        info = await self._refresh(lease, task)
        return web.json_response({**dataclasses.asdict(info), "id": gw_id})

    async def _h_logs(self, request: web.Request) -> web.Response:
        lease, task, _ = self._task(request)
        return web.Response(text=await self.connectors[lease.location].task_logs(task.qpu_id))

    async def close(self) -> None:
        for lease_id in list(self.leases):
            await self.release(lease_id)
        for location in self._started:
            await self.connectors[location].stop()


def _mean(values: collections.deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


async def _quietly(coro: Any) -> Any:
    """A best-effort lookup: its answer within one request timeout, else None."""
    try:
        return await asyncio.wait_for(coro, REQUEST_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - best effort
        return None


STEP_ROUTES = frozenset(
    {
        "GET /v1/status",
        "POST /v1/tasks",
        "GET /v1/tasks/{id}",
        "GET /v1/tasks/{id}/result",
        "POST /v1/tasks/{id}/cancel",
        "GET /v1/tasks/{id}/logs",
    }
)
"""What steps call: forwarded to the QPU (leases wait for a slot, so they are apart)."""


class RequestTimes:
    """How long the gateway took to answer, per route (the last ``keep`` of each)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.keep = keep
        self.seconds: dict[str, collections.deque[float]] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        begin = time.perf_counter()
        try:
            return await handler(request)
        finally:
            resource = request.match_info.route.resource
            route = f"{request.method} {resource.canonical if resource else request.path}"
            if route != "GET /v1/stats":
                times = self.seconds.setdefault(route, collections.deque(maxlen=self.keep))
                times.append(time.perf_counter() - begin)

    def summary(self, routes: frozenset[str] | None = None) -> dict[str, Any]:
        """Per route (or, with ``routes``, over those routes together): count, percentiles."""
        if routes is not None:
            return _percentiles([t for r in routes for t in self.seconds.get(r, ())])
        return {route: _percentiles(list(times)) for route, times in sorted(self.seconds.items())}


def _percentiles(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)

    def ms(q: float) -> float | None:
        """Nearest-rank percentile in milliseconds."""
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    quantiles = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99, "max_ms": 1.0}
    return {"count": len(ordered), **{name: ms(q) for name, q in quantiles.items()}}


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; 400 (not a 502 traceback text) when it is not one."""
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the request body must be a JSON object")
    return body


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


@web.middleware
async def _errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error as JSON with a reason; connector failures become 502, never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - the QPU side failed; tell the client why
        # The QPU refused the request itself (a bad task, 4xx): the same status, so that the
        # client does not retry what cannot succeed. Anything else is 502, also a QPU refusing
        # the vendor credential (401/403: not the step's fault) or asking to slow down.
        status = getattr(exc, "status", None)
        is_4xx = isinstance(status, int) and 400 <= status < 500
        refused = is_4xx and status not in (401, 403, 408, 429)
        error = redact(f"{type(exc).__name__}: {exc}")
        return web.json_response({"error": error}, status=status if refused else 502)


async def start_gateway(
    gateway: Gateway, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve ``gateway`` on the running loop; returns the runner (to stop) and its URL."""
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    bound_port = sockets[0].getsockname()[1]
    return runner, f"http://{host}:{bound_port}"


def main(argv: list[str] | None = None) -> int:
    """``qflow gateway DEPLOYMENT``: a site-wide gateway for the deployment's QPUs."""
    from qflow.deployment import DeploymentError, load_deployment
    from qflow.emulator import port_number
    from qflow.secrets import SecretError, resolve_secret

    parser = argparse.ArgumentParser(prog="qflow gateway", description=main.__doc__)
    parser.add_argument("deployment", help="deployment.yml whose quantum locations to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--admin-token",
        required=True,
        help="reference to the admin token orchestrators present: ${env:NAME} or ${file:PATH}",
    )
    args = parser.parse_args(argv)
    try:
        deployment = load_deployment(args.deployment)
        admin = resolve_secret(args.admin_token)
    except (DeploymentError, SecretError) as exc:
        print(f"qflow gateway: error: {exc}", file=sys.stderr)
        return 2
    connectors = quantum_connectors(deployment)
    if not connectors:
        print(f"qflow gateway: error: {args.deployment} has no quantum location", file=sys.stderr)
        return 2

    async def serve() -> None:
        gateway = Gateway(connectors, admin)
        runner, url = await start_gateway(gateway, args.host, args.port)
        print(f"qflow gateway listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gateway.close()
        await runner.cleanup()

    asyncio.run(serve())
    return 0


def quantum_connectors(deployment: Any) -> dict[str, QuantumConnector]:
    """Instances of the quantum connectors of a deployment's locations, by location name."""
    from qflow.connector import connector_class

    found: dict[str, QuantumConnector] = {}
    for name, config in deployment.locations.items():
        cls = connector_class(config.connector)
        if issubclass(cls, QuantumConnector):
            found[name] = cls(name, config)
    return found


if __name__ == "__main__":
    sys.exit(main())
