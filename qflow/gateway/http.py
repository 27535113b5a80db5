"""The gateway's HTTP API: leases for orchestrators (admin token), tasks for steps.

Steps (their per-step token only) submit tasks, read their state and results; the API has
the emulator's shape (``/v1/tasks``, ``/v1/status``), so a client talks to a gateway or to a
bare QPU service the same way. Orchestrators (the admin token) take and release leases
(``/v1/leases``, by a key they chose and journalled first) and read a location's queue
(``/v1/locations/{name}``) for placement's estimates.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import secrets
import time
from typing import Any

from aiohttp import web

from qflow.connectors.task_errors import TaskRefused
from qflow.gateway.core import Gateway
from qflow.gateway.leases import GatewayTask, Lease, LeaseRefused
from qflow.secrets import redact


class GatewayHttp:
    """The routes of one gateway, and how long it took to answer them."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.request_times = RequestTimes()

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
        if not hmac.compare_digest(_bearer(request), self.gateway.admin_token):
            raise web.HTTPUnauthorized(reason="admin token required")

    def _step(self, request: web.Request) -> Lease:
        lease = self.gateway.lease_of(_bearer(request))
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
                "locations": {name: slots.stats() for name, slots in self.gateway.slots.items()},
            }
        )

    async def _h_lease(self, request: web.Request) -> web.Response:
        self._admin(request)
        body = await _json_object(request)
        key = body.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            raise web.HTTPBadRequest(reason="key must be a string of 1 to 128 characters")
        try:
            lease = await self.gateway.lease(
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
        summary = await self.gateway.withdraw(request.match_info["id"])
        if summary is None:
            raise web.HTTPNotFound(reason="no such lease (withdrawn: it will not be granted)")
        return web.json_response({**summary.as_json(), "states": [t.state for t in summary.tasks]})

    async def _h_info(self, request: web.Request) -> web.Response:
        self._admin(request)
        name = request.match_info["name"]
        if name not in self.gateway.connectors:
            raise web.HTTPNotFound(reason=f"no quantum location {name!r}")
        return web.json_response(await self.gateway.info(name))

    async def _h_status(self, request: web.Request) -> web.Response:
        lease = self._step(request)
        status = await self.gateway.connectors[lease.location].status()
        return web.json_response(dataclasses.asdict(status))

    async def _h_submit(self, request: web.Request) -> web.Response:
        lease = self._step(request)
        task = await _json_object(request)
        key = request.headers.get("Idempotency-Key") or secrets.token_hex(8)
        gw_id = await self.gateway.start_task(lease, task, key)
        return web.json_response({"id": gw_id, "state": "queued"}, status=201)

    def _task(self, request: web.Request) -> tuple[Lease, GatewayTask, str]:
        lease = self._step(request)
        gw_id = request.match_info["id"]
        if gw_id not in lease.tasks:
            raise web.HTTPNotFound(reason="no such task for this step")
        return lease, lease.tasks[gw_id], gw_id

    async def _h_task(self, request: web.Request) -> web.Response:
        lease, task, gw_id = self._task(request)
        info = await self.gateway.refresh(lease, task)
        return web.json_response({**dataclasses.asdict(info), "id": gw_id})

    async def _h_result(self, request: web.Request) -> web.Response:
        lease, task, _ = self._task(request)
        info = await self.gateway.refresh(lease, task)
        if info.state != "completed":
            return web.json_response({"error": f"task is {info.state}"}, status=409)
        result = await self.gateway.connectors[lease.location].task_result(task.qpu_id)
        return web.json_response(result)

    async def _h_cancel(self, request: web.Request) -> web.Response:
        lease, task, gw_id = self._task(request)
        await self.gateway.connectors[lease.location].task_stop(task.qpu_id)
        info = await self.gateway.refresh(lease, task)
        return web.json_response({**dataclasses.asdict(info), "id": gw_id})

    async def _h_logs(self, request: web.Request) -> web.Response:
        lease, task, _ = self._task(request)
        connector = self.gateway.connectors[lease.location]
        return web.Response(text=await connector.task_logs(task.qpu_id))


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
    except TaskRefused as exc:  # a task no QPU here can take: the step must not retry it
        return web.json_response({"error": redact(str(exc))}, status=400)
    except Exception as exc:  # noqa: BLE001 - the QPU side failed; tell the client why
        # The QPU refused the request itself (a bad task, 4xx): the same status, so that the
        # client does not retry what cannot succeed. Anything else is 502, also a QPU refusing
        # the vendor credential (401/403: not the step's fault) or asking to slow down.
        status = getattr(exc, "status", None)
        refused = isinstance(status, int) and 400 <= status < 500
        if not isinstance(status, int) or not refused or status in (401, 403, 408, 429):
            status = 502
        error = redact(f"{type(exc).__name__}: {exc}")
        return web.json_response({"error": error}, status=status)


async def start_gateway(
    gateway: Gateway, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve ``gateway`` on the running loop; returns the runner (to stop) and its URL."""
    runner = web.AppRunner(GatewayHttp(gateway).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    bound_port = sockets[0].getsockname()[1]
    return runner, f"http://{host}:{bound_port}"
