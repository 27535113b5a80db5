"""A local stand-in for IBM Quantum's REST API: the subset qrmi's IBM resources call.

It speaks enough of the IBM Cloud IAM token endpoint and of the Quantum Compute Service API
(``/api/v1``: backends, sessions, jobs, results, logs) for qrmi's
``ibm-quantum-compute-service`` resource to run a full acquire → task → result → release cycle
against ``127.0.0.1``. Schemas are as strict as qrmi's client needs them (found by running
qrmi against it): sessions carry ``mode``; jobs carry ``id``, ``status``, ``state.status``,
``program.id``, ``created`` and ``cost``; ``/results`` is sent as ``text/plain`` (qrmi reads
it as a string and hands it to the caller undecoded).

Every API call must carry the bearer token issued for the right API key and the service CRN.
Sampler jobs really run: the OpenQASM 3 pubs are simulated with qiskit's ideal
``StatevectorSampler`` (qiskit needed) and the result is encoded the way the real service
does it (``RuntimeEncoder``). ``hold`` keeps new jobs queued until :meth:`release_jobs`, for
cancellation tests. Every request is recorded in ``requests`` (method, path, whether the API
key appeared anywhere but the token endpoint).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import json
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import web

API = "/api/v1"
SIMULATOR = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fake-ibm")
"""Long-lived threads for the simulations (see qflow.connectors.sdk_threads.WORKERS for why)."""


def _now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclasses.dataclass
class FakeJob:
    id: str
    program: str
    backend: str
    params: dict[str, Any]
    session_id: str | None
    created: str
    status: str = "Queued"
    reason: str | None = None
    result: str | None = None
    runner: asyncio.Task[None] | None = None

    def as_json(self) -> dict[str, Any]:
        state: dict[str, Any] = {"status": self.status}
        if self.reason:
            state["reason"] = self.reason
        body: dict[str, Any] = {
            "id": self.id,
            "backend": self.backend,
            "status": self.status,
            "state": state,
            "program": {"id": self.program},
            "created": self.created,
            "cost": 600,
            "runtime": "",
            "private": False,
            "tags": [],
            "usage": {"quantum_seconds": 1 if self.status == "Completed" else 0, "seconds": 1},
        }
        if self.session_id:
            body["session_id"] = self.session_id
        return body


def _backend_files(backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Configuration and properties of a fake backend, from qiskit-ibm-runtime's snapshots."""
    import qiskit_ibm_runtime

    short = backend.removeprefix("fake_")
    folder = Path(qiskit_ibm_runtime.__file__).parent / "fake_provider" / "backends" / short
    conf = json.loads((folder / f"conf_{short}.json").read_text())
    props = json.loads((folder / f"props_{short}.json").read_text())
    conf["backend_name"] = backend
    props["backend_name"] = backend
    return conf, props


class FakeIbmService:
    """The fake service; :meth:`start` serves it on 127.0.0.1 and returns its base URL."""

    def __init__(
        self,
        api_key: str,
        crn: str,
        backend: str = "fake_nairobi",
        hold: bool = False,
        online: bool = True,
        seed: int = 11,
    ) -> None:
        self.api_key = api_key
        self.crn = crn
        self.backend = backend
        self.hold = hold
        self.online = online
        self.seed = seed
        self.tokens: set[str] = set()
        self.jobs: dict[str, FakeJob] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.key_leaks: list[str] = []
        """Requests other than the token exchange that carried the API key somewhere."""
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- server --------------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(middlewares=[self._record])
        app.add_routes(
            [
                web.post("/identity/token", self._token),
                web.get(f"{API}/backends", self._backends),
                web.get(f"{API}/backends/{{name}}/status", self._backend_status),
                web.get(f"{API}/backends/{{name}}/configuration", self._configuration),
                web.get(f"{API}/backends/{{name}}/properties", self._properties),
                web.post(f"{API}/sessions", self._session_create),
                web.get(f"{API}/sessions/{{id}}", self._session_get),
                web.patch(f"{API}/sessions/{{id}}", self._session_update),
                web.delete(f"{API}/sessions/{{id}}/close", self._session_close),
                web.post(f"{API}/jobs", self._job_create),
                web.get(f"{API}/jobs", self._job_list),
                web.get(f"{API}/jobs/{{id}}", self._job_get),
                web.post(f"{API}/jobs/{{id}}/cancel", self._job_cancel),
                web.delete(f"{API}/jobs/{{id}}", self._job_delete),
                web.get(f"{API}/jobs/{{id}}/results", self._job_results),
                web.get(f"{API}/jobs/{{id}}/logs", self._job_logs),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for job in self.jobs.values():
            if job.runner is not None:
                job.runner.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release_jobs(self) -> None:
        """Let held jobs run."""
        self._released.set()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path))
        text = f"{request.path_qs} {dict(request.headers)} {body.decode(errors='replace')}"
        if request.path != "/identity/token" and self.api_key in text:
            self.key_leaks.append(f"{request.method} {request.path}")
        if request.path.startswith(API):
            bearer = request.headers.get("Authorization", "")
            if bearer.removeprefix("Bearer ") not in self.tokens:
                return _error(401, "Unauthorized: missing or unknown bearer token")
            if request.headers.get("Service-CRN") != self.crn:
                return _error(403, "Forbidden: wrong or missing Service-CRN")
        return await handler(request)

    # -- IAM -----------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("apikey") != self.api_key:
            return _error(400, "Provided API key could not be found.")
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        now = int(time.time())
        return web.json_response(
            {
                "access_token": token,
                "refresh_token": "not_supported",
                "ims_user_id": 1,
                "token_type": "Bearer",
                "expires_in": 3600,
                "expiration": now + 3600,
                "scope": "ibm openid",
            }
        )

    # -- backends ------------------------------------------------------------------------------
    def _known(self, request: web.Request) -> None:
        if request.match_info["name"] != self.backend:
            raise web.HTTPNotFound(
                text=json.dumps({"errors": [{"message": "backend not found", "code": 1216}]}),
                content_type="application/json",
            )

    def _pending(self) -> int:
        return sum(j.status in ("Queued", "Running") for j in self.jobs.values())

    async def _backends(self, request: web.Request) -> web.Response:
        conf = _backend_files(self.backend)[0]
        device = {
            "name": self.backend,
            "status": {
                "name": "online" if self.online else "offline",
                "reason": "available" if self.online else "under maintenance",
            },
            "is_simulator": False,
            "qubits": conf["n_qubits"],
            "clops": {"type": "hardware", "value": 2400},
            "processor_type": {"family": "Falcon", "revision": "5.11"},
            "queue_length": self._pending(),
        }
        return web.json_response({"devices": [device]})

    async def _backend_status(self, request: web.Request) -> web.Response:
        self._known(request)
        pending = self._pending()
        return web.json_response(
            {
                "state": self.online,
                "status": "online" if self.online else "offline",
                "message": "available" if self.online else "under maintenance",
                "length_queue": pending,
                "backend_version": "1.0.0",
                "name": self.backend,
            }
        )

    async def _configuration(self, request: web.Request) -> web.Response:
        self._known(request)
        return web.json_response(_backend_files(self.backend)[0])

    async def _properties(self, request: web.Request) -> web.Response:
        self._known(request)
        return web.json_response(_backend_files(self.backend)[1])

    # -- sessions ------------------------------------------------------------------------------
    async def _session_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("mode") not in ("dedicated", "batch"):
            return _error(400, "mode is required: dedicated or batch")
        session = {
            "id": f"s-{secrets.token_hex(6)}",
            "backend_name": body.get("backend") or self.backend,
            "mode": body["mode"],
            "max_ttl": body.get("max_ttl", 28800),
            "active_ttl": body.get("max_ttl", 28800),
            "state": "open",
            "accepting_jobs": True,
            "started_at": _now(),
            "created_at": _now(),
        }
        self.sessions[session["id"]] = session
        return web.json_response(session)

    async def _session_get(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _error(404, "session not found")
        return web.json_response(session)

    async def _session_update(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _error(404, "session not found")
        body = await request.json()
        if "accepting_jobs" in body:
            session["accepting_jobs"] = bool(body["accepting_jobs"])
            session["state"] = "closed" if not session["accepting_jobs"] else "open"
        return web.Response(status=204)

    async def _session_close(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _error(404, "session not found")
        session["state"] = "closed"
        session["accepting_jobs"] = False
        return web.Response(status=204)

    # -- jobs ----------------------------------------------------------------------------------
    async def _job_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("backend") != self.backend:
            return _error(400, f"unknown backend {body.get('backend')!r}")
        if body.get("program_id") not in ("sampler", "estimator"):
            return _error(400, f"unknown program {body.get('program_id')!r}")
        session_id = body.get("session_id")
        if session_id and not self.sessions.get(session_id, {}).get("accepting_jobs"):
            return _error(400, "session is closed")
        job = FakeJob(
            id=f"j-{secrets.token_hex(8)}",
            program=body["program_id"],
            backend=self.backend,
            params=body.get("params") or {},
            session_id=session_id,
            created=_now(),
        )
        self.jobs[job.id] = job
        job.runner = asyncio.get_running_loop().create_task(self._execute(job))
        return web.json_response({"id": job.id, "backend": self.backend}, status=200)

    async def _execute(self, job: FakeJob) -> None:
        await asyncio.sleep(0.05)
        if self.hold:
            await self._released.wait()
        if job.status != "Queued":
            return
        job.status = "Running"
        try:
            job.result = await asyncio.get_running_loop().run_in_executor(
                SIMULATOR, self._simulate, job
            )
        except Exception as exc:  # noqa: BLE001 - the job fails, as on the real service
            if job.status == "Running":
                job.status, job.reason = "Failed", f"{type(exc).__name__}: {exc}"
            return
        if job.status == "Running":
            job.status = "Completed"

    def _simulate(self, job: FakeJob) -> str:
        from qiskit import qasm3
        from qiskit.primitives import StatevectorSampler
        from qiskit_ibm_runtime.utils.json import RuntimeEncoder

        if job.program != "sampler":
            raise ValueError("this fake service runs sampler jobs only")
        params = job.params
        default = params.get("shots") or (params.get("options") or {}).get("default_shots") or 1024
        pubs = []
        for pub in params["pubs"]:
            pub = pub if isinstance(pub, list) else [pub]
            circuit = qasm3.loads(pub[0])
            values = pub[1] if len(pub) > 1 else None
            shots = pub[2] if len(pub) > 2 and pub[2] else default
            pubs.append((circuit, values, shots))
        result = StatevectorSampler(seed=self.seed).run(pubs).result()
        return json.dumps(result, cls=RuntimeEncoder)

    async def _job_list(self, request: web.Request) -> web.Response:
        jobs = list(self.jobs.values())
        if request.query.get("pending") == "true":
            jobs = [j for j in jobs if j.status in ("Queued", "Running")]
        if "session_id" in request.query:
            jobs = [j for j in jobs if j.session_id == request.query["session_id"]]
        limit = int(request.query.get("limit", 200))
        offset = int(request.query.get("offset", 0))
        page = jobs[offset : offset + limit]
        return web.json_response(
            {
                "jobs": [j.as_json() for j in page],
                "count": len(jobs),
                "limit": limit,
                "offset": offset,
            }
        )

    def _job(self, request: web.Request) -> FakeJob:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(
                text=json.dumps({"errors": [{"message": "job not found", "code": 1291}]}),
                content_type="application/json",
            )
        return job

    async def _job_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._job(request).as_json())

    async def _job_cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status not in ("Queued", "Running"):
            return _error(409, f"job is {job.status}")
        job.status, job.reason = "Cancelled", "cancelled by the user"
        return web.Response(status=204)

    async def _job_delete(self, request: web.Request) -> web.Response:
        job = self._job(request)
        del self.jobs[job.id]
        return web.Response(status=204)

    async def _job_results(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.status != "Completed" or job.result is None:
            return _error(409, f"job is {job.status}: no results")
        return web.Response(text=job.result, content_type="text/plain")

    async def _job_logs(self, request: web.Request) -> web.Response:
        job = self._job(request)
        reason = f": {job.reason}" if job.reason else ""
        return web.Response(text=f"{job.created} job {job.id} {job.status}{reason}\n")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"errors": [{"message": message, "code": status}]}, status=status)
