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
import dataclasses
import hmac
import logging
import secrets
import signal
import sys
import time
from typing import Any

from aiohttp import web

from qflow.quantum import FINAL_STATES, QuantumConnector, TaskInfo

_logger = logging.getLogger("qflow.gateway")


class LeaseRefused(Exception):
    """No slot for the step: the reason says why (offline, unreachable, busy too long)."""


@dataclasses.dataclass
class Lease:
    id: str
    location: str
    step: str
    token: str
    granted: float
    tasks: dict[str, str] = dataclasses.field(default_factory=dict)
    """Gateway task id -> the QPU's task id."""
    task_info: dict[str, TaskInfo] = dataclasses.field(default_factory=dict)
    qpu_seconds: float = 0.0
    accounted: set[str] = dataclasses.field(default_factory=set)


class QpuSlots:
    """The virtual-QPU slots of one location: at most ``vqpus`` leases at a time."""

    def __init__(self, connector: QuantumConnector) -> None:
        self.connector = connector
        self.free = connector.config.vqpus
        self._changed = asyncio.Condition()
        self.granted = self.refused = self.most_held = 0
        """Counters for ``GET /v1/stats``: leases granted, refused, most held at once."""

    async def take(self, max_wait: float) -> None:
        async with self._changed:
            try:
                if self.free <= 0:  # (wait_for with a timeout of 0 never runs the wait)
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.free > 0), max_wait)
            except TimeoutError:
                raise LeaseRefused(
                    f"no virtual QPU of {self.connector.location} became free within {max_wait:g} s"
                ) from None
            self.free -= 1
            self.granted += 1
            self.most_held = max(self.most_held, self.connector.config.vqpus - self.free)

    async def give_back(self) -> None:
        async with self._changed:
            self.free += 1
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
    """Leases and task forwarding for a set of quantum connectors (runs on one event loop)."""

    def __init__(self, connectors: dict[str, QuantumConnector], admin_token: str) -> None:
        self.connectors = connectors
        self.admin_token = admin_token
        self.slots = {name: QpuSlots(c) for name, c in connectors.items()}
        self.leases: dict[str, Lease] = {}
        self._by_token: dict[str, Lease] = {}
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

    async def lease(self, location: str, step: str, max_wait: float) -> Lease:
        if location not in self.connectors:
            raise KeyError(location)
        try:
            await self._check_online(location)
            await self.slots[location].take(max_wait)
        except LeaseRefused:
            self.slots[location].refused += 1
            raise
        lease = Lease(
            id=secrets.token_hex(8),
            location=location,
            step=step,
            token=secrets.token_urlsafe(24),
            granted=time.time(),
        )
        self.leases[lease.id] = lease
        self._by_token[lease.token] = lease
        return lease

    async def _check_online(self, location: str) -> None:
        connector = await self._connector(location)
        try:
            status = await connector.status()
        except Exception as exc:  # noqa: BLE001 - any failure to reach it is a refusal
            raise LeaseRefused(f"QPU {location} is unreachable: {exc}") from None
        if not status.online:
            detail = f" ({status.detail})" if status.detail else ""
            raise LeaseRefused(f"QPU {location} reports itself offline{detail}")

    async def release(self, lease_id: str) -> Lease:
        lease = self.leases.pop(lease_id)
        self._by_token.pop(lease.token, None)
        connector = self.connectors[lease.location]
        try:
            for gw_id, qpu_id in lease.tasks.items():
                info = await self._refresh(lease, gw_id)
                if info.state not in FINAL_STATES:
                    await connector.task_stop(qpu_id)
                    await self._refresh(lease, gw_id)
        except Exception as exc:  # noqa: BLE001 - the slot must come back whatever happens
            _logger.warning("releasing lease of %s: %s", lease.step, exc)
        finally:
            await self.slots[lease.location].give_back()
        return lease

    async def _refresh(self, lease: Lease, gw_id: str) -> TaskInfo:
        """Current state of a task; accounts its QPU-seconds once it is final."""
        info = await self.connectors[lease.location].task_status(lease.tasks[gw_id])
        lease.task_info[gw_id] = info
        if info.state in FINAL_STATES and gw_id not in lease.accounted:
            lease.accounted.add(gw_id)
            if info.qpu_seconds is not None:
                lease.qpu_seconds += info.qpu_seconds
            elif info.started is not None and info.ended is not None:
                lease.qpu_seconds += max(0.0, info.ended - info.started)
        return info

    # -- HTTP ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.request_times.middleware, _errors_as_json])
        app.add_routes(
            [
                web.get("/v1/stats", self._h_stats),
                web.post("/v1/leases", self._h_lease),
                web.delete("/v1/leases/{id}", self._h_release),
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
        try:
            lease = await self.lease(
                str(body["location"]), str(body.get("step", "")), float(body.get("max_wait", 0))
            )
        except KeyError:
            raise web.HTTPNotFound(reason=f"no quantum location {body.get('location')!r}") from None
        except LeaseRefused as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"lease": lease.id, "token": lease.token}, status=201)

    async def _h_release(self, request: web.Request) -> web.Response:
        self._admin(request)
        lease_id = request.match_info["id"]
        if lease_id not in self.leases:
            raise web.HTTPNotFound(reason="no such lease")
        lease = await self.release(lease_id)
        states = [i.state for i in lease.task_info.values()]
        return web.json_response(
            {"qpu_seconds": lease.qpu_seconds, "tasks": len(lease.tasks), "states": states}
        )

    async def _h_status(self, request: web.Request) -> web.Response:
        lease = self._step(request)
        status = await self.connectors[lease.location].status()
        return web.json_response(dataclasses.asdict(status))

    async def _h_submit(self, request: web.Request) -> web.Response:
        lease = self._step(request)
        task = await _json_object(request)
        key = request.headers.get("Idempotency-Key") or secrets.token_hex(8)
        gw_id = f"{lease.id}-{key}"
        if gw_id not in lease.tasks:
            qpu_id = await self.connectors[lease.location].task_start(task, f"{lease.id}-{key}")
            lease.tasks[gw_id] = qpu_id
        return web.json_response({"id": gw_id, "state": "queued"}, status=201)

    def _task(self, request: web.Request) -> tuple[Lease, str]:
        lease = self._step(request)
        gw_id = request.match_info["id"]
        if gw_id not in lease.tasks:
            raise web.HTTPNotFound(reason="no such task for this step")
        return lease, gw_id

    async def _h_task(self, request: web.Request) -> web.Response:
        lease, gw_id = self._task(request)
        info = await self._refresh(lease, gw_id)
        return web.json_response({**dataclasses.asdict(info), "id": gw_id})

    async def _h_result(self, request: web.Request) -> web.Response:
        lease, gw_id = self._task(request)
        info = await self._refresh(lease, gw_id)
        if info.state != "completed":
            return web.json_response({"error": f"task is {info.state}"}, status=409)
        result = await self.connectors[lease.location].task_result(lease.tasks[gw_id])
        return web.json_response(result)

    async def _h_cancel(self, request: web.Request) -> web.Response:
        lease, gw_id = self._task(request)
        await self.connectors[lease.location].task_stop(lease.tasks[gw_id])
        info = await self._refresh(lease, gw_id)
        return web.json_response({**dataclasses.asdict(info), "id": gw_id})

    async def _h_logs(self, request: web.Request) -> web.Response:
        lease, gw_id = self._task(request)
        return web.Response(
            text=await self.connectors[lease.location].task_logs(lease.tasks[gw_id])
        )

    async def close(self) -> None:
        for lease_id in list(self.leases):
            await self.release(lease_id)
        for location in self._started:
            await self.connectors[location].stop()


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
        from qflow.secrets import redact

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
    from qflow.secrets import SecretError, resolve_secret

    parser = argparse.ArgumentParser(prog="qflow gateway", description=main.__doc__)
    parser.add_argument("deployment", help="deployment.yml whose quantum locations to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
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
