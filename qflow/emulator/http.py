"""The emulator's REST API (JSON under ``/v1``, a bearer token on every request).

Described in docs/emulator.md; :func:`start_emulator` serves it on the running loop.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from qflow.emulator.backends import DEFAULT_BACKEND
from qflow.emulator.errors import ApiError
from qflow.emulator.faults import MALFORMED_BODY, WRONG_SHAPE_BODY, Faults, reset_connection
from qflow.emulator.qpu import QpuEmulator
from qflow.quantum import FINAL_STATES

_logger = logging.getLogger("qflow.emulator")

MAX_BODY_BYTES = 64 * 1024 * 1024
"""QUBOs of a few thousand variables with dense terms still fit."""
MAX_KEY_LENGTH = 256


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


def _auth(token: str) -> Middleware:
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
        reset_connection(request)
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
