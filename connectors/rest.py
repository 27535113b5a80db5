"""The ``rest`` quantum connector: any QPU service with the emulator's REST shape.

Speaks the API of :mod:`qflow.emulator` (``/v1/tasks``, ``/v1/status``; see
docs/emulator.md) with a bearer token read from a credential reference. Transient failures
(connection errors, timeouts, HTTP 5xx) are retried with exponential backoff; a retried
submission carries the same ``Idempotency-Key``, so a connection reset after the service
accepted a task does not create a second one. Error messages never contain the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator

from qflow.quantum import (
    QpuStatus,
    QuantumConfigT,
    QuantumConnector,
    QuantumLocationConfig,
    TaskBody,
    TaskInfo,
)
from qflow.secrets import SecretReference, redact, resolve_secret

if TYPE_CHECKING:
    import aiohttp

_logger = logging.getLogger("qflow.connectors.rest")

TASK_STATES = frozenset({"queued", "running", "completed", "failed", "cancelled"})
RETRY_STATUSES = frozenset({500, 502, 503, 504})
"""HTTP statuses worth another attempt (a proxy hiccup, a restarting service)."""
MAX_MESSAGE = 300
"""Characters of a server's error text quoted in an exception."""


class QpuError(RuntimeError):
    """A QPU service call failed; the message says which location, call and why."""


class QpuUnreachable(QpuError):
    """No answer from the service after every retry (connection refused/reset, timeout)."""


class QpuOffline(QpuError):
    """The service answered that the QPU is offline (HTTP 503, code ``offline``)."""


class QpuRequestError(QpuError):
    """The service refused a request (HTTP 4xx, or 5xx after every retry)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class QpuAuthError(QpuRequestError):
    """HTTP 401/403: the token is missing, wrong or not allowed."""


class TaskNotFound(QpuRequestError):
    """HTTP 404: the service does not know the task."""


class ResultNotReady(QpuRequestError):
    """HTTP 409: the task has no result (not completed yet, failed or cancelled)."""


class RestConfig(QuantumLocationConfig):
    """Keys of a ``connector: rest`` location."""

    url: str = Field(description="Base URL of the QPU service (the API is under its /v1 path).")
    token: SecretReference = Field(
        description="Bearer token of the service, as a reference: ${env:NAME} or ${file:PATH}."
    )
    backend: str | None = Field(
        default=None,
        description="Backend the tasks run on when a task names none; omitted: the "
        "service's default.",
    )
    timeout: float = Field(default=10.0, gt=0, description="HTTP timeout in seconds.")
    http_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a call that failed transiently (connection error, "
        "timeout, HTTP 5xx).",
    )
    backoff: float = Field(
        default=0.5,
        ge=0,
        description="Seconds before the first retry; doubled for each further one.",
    )
    verify_tls: bool = Field(
        default=True, description="Verify the service's TLS certificate (https URLs)."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "url must be an http:// or https:// URL with a host. "
                "Fix: write e.g. url: https://qpu.example.org"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(
                "url must not carry credentials, a query or a fragment. "
                "Fix: put the credential in `token` as ${env:NAME} or ${file:PATH}"
            )
        return value.rstrip("/")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and how the client calls a QPU service (a ``rest`` location's keys, or the URL
    of the emulator an ``emulator`` location starts)."""

    url: str
    token_reference: str
    """Where the token comes from (``${env:NAME}``...), for messages: never the token."""
    backend: str | None = None
    timeout: float = 10.0
    http_retries: int = 3
    backoff: float = 0.5
    verify_tls: bool = True

    @classmethod
    def of(cls, config: RestConfig) -> Endpoint:
        return cls(
            url=config.url,
            token_reference=config.token,
            backend=config.backend,
            timeout=config.timeout,
            http_retries=config.http_retries,
            backoff=config.backoff,
            verify_tls=config.verify_tls,
        )


class RestClient(QuantumConnector[QuantumConfigT]):
    """The quantum-connector contract over the emulator's REST API, for any location's keys:
    ``endpoint`` says where the service is."""

    task_kinds: ClassVar[tuple[str, ...]] = ("qubo",)

    def __init__(self, location: str, config: QuantumConfigT, endpoint: Endpoint) -> None:
        super().__init__(location, config)
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._token = ""

    # -- session -------------------------------------------------------------------------------
    async def _open(self, token: str) -> None:
        """Open the one HTTP session this connector uses (by :meth:`start`)."""
        import aiohttp  # here, not at import: validating a deployment needs no HTTP stack

        self._token = token
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout),
            connector=aiohttp.TCPConnector(ssl=self.endpoint.verify_tls),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _scrub(self, text: str) -> str:
        """Text safe for an exception: the token (and every registered secret) masked."""
        text = redact(text)
        return text.replace(self._token, "***") if self._token else text

    def _fail(self, cls: type[QpuError], text: str, *args: Any) -> QpuError:
        return cls(self._scrub(f"QPU {self.location}: {text}"), *args)

    # -- HTTP ----------------------------------------------------------------------------------
    async def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One call with retries of transient failures; returns the last status and body."""
        if self._session is None:
            raise self._fail(QpuError, "connector used before start()")
        import aiohttp

        url = f"{self.endpoint.url}/v1{path}"
        attempts = self.endpoint.http_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._session.request(
                    method, url, json=body, headers=headers, allow_redirects=False
                ) as response:
                    status, data = response.status, await response.read()
                if attempt == attempts or not _transient(status, data):
                    return status, data
                problem = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = _describe(exc, self.endpoint.timeout)
                if attempt == attempts:
                    raise self._fail(
                        QpuUnreachable,
                        f"{method} {url} failed after {attempts} attempt(s): {problem}",
                    ) from None
            delay = self.endpoint.backoff * 2 ** (attempt - 1)
            note = f"{method} {url}: {problem}; retry {attempt}/{attempts - 1} in {delay:g} s"
            _logger.info("%s", self._scrub(f"QPU {self.location}: {note}"))  # a retry is routine
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(
        self,
        method: str,
        path: str,
        ok: tuple[int, ...] = (200,),
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        status, data = await self._request(method, path, body, headers)
        if status in ok:
            return data
        raise self._http_error(method, path, status, data)

    def _http_error(self, method: str, path: str, status: int, data: bytes) -> QpuError:
        reason, code = _error_text(data)
        where = f"{method} {self.endpoint.url}/v1{path}"
        if status == 503 and code == "offline":
            return self._fail(QpuOffline, f"the QPU is offline ({reason})")
        if status in (401, 403):
            return self._fail(
                QpuAuthError,
                f"{where}: HTTP {status}: {reason}. Fix: check the token that "
                f"{self.endpoint.token_reference} holds",
                status,
            )
        cls = {404: TaskNotFound, 409: ResultNotReady}.get(status, QpuRequestError)
        retried = f" (after {self.endpoint.http_retries + 1} attempts)" if status >= 500 else ""
        return self._fail(cls, f"{where}: HTTP {status}{retried}: {reason}", status)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        data = await self._call(method, path, **kwargs)
        try:
            return json.loads(data)
        except ValueError:
            what = (
                f"{method} {self.endpoint.url}/v1{path}: the answer is not JSON: {_excerpt(data)}"
            )
            raise self._fail(QpuError, what) from None

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A JSON object answer; anything else (a list, a string) is the service's error."""
        data = await self._json(method, path, **kwargs)
        if not isinstance(data, dict):
            raise self._fail(
                QpuError,
                f"{method} {self.endpoint.url}/v1{path}: the answer is not a JSON object: "
                f"{_excerpt(json.dumps(data).encode())}",
            )
        return data

    # -- the QuantumConnector contract ---------------------------------------------------------
    async def status(self) -> QpuStatus:
        data = await self._object("GET", "/status")
        done = data.get("tasks_completed")
        online = data.get("online", False)
        counts = [data.get(k, d) for k, d in (("capacity", 1), ("running", 0), ("pending", 0))]
        if not isinstance(online, bool) or not all(_is_count(c) for c in counts):
            raise self._fail(
                QpuError,
                f"GET {self.endpoint.url}/v1/status: unexpected answer (online must be true/false, "
                f"capacity/running/pending integers): {_excerpt(json.dumps(data).encode())}",
            )
        task_seconds = data.get("task_seconds")
        backend = (data.get("backends") or {}).get(self.endpoint.backend or "")
        if isinstance(backend, dict) and "scaled_latency_s" in backend:  # the emulator's
            task_seconds = backend["scaled_latency_s"]  # the backend this location asks for
        return QpuStatus(
            online=online,
            capacity=counts[0],
            running=counts[1],
            pending=counts[2],
            detail="" if done is None else f"{done} tasks completed",
            task_seconds=_float(task_seconds) if task_seconds is not None else None,
        )

    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        body = dict(task)
        if self.endpoint.backend and not body.get("backend"):
            body["backend"] = self.endpoint.backend
        data = await self._object(
            "POST",
            "/tasks",
            ok=(200, 201),
            body=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        if not isinstance(data.get("id"), str | int) or data["id"] == "":
            raise self._fail(QpuError, "POST /tasks: the answer has no task id")
        return str(data["id"])

    async def task_status(self, task_id: str) -> TaskInfo:
        data = await self._object("GET", f"/tasks/{_quote(task_id)}")
        state = data.get("state")
        if state not in TASK_STATES:
            raise self._fail(QpuError, f"task {task_id}: unexpected state {state!r}")
        return TaskInfo(
            id=str(data.get("id", task_id)),
            state=state,
            message=data.get("message"),
            qpu_seconds=_float(data.get("qpu_seconds")),
            started=_float(data.get("started")),
            ended=_float(data.get("ended")),
        )

    async def task_result(self, task_id: str) -> dict[str, Any]:
        return await self._object("GET", f"/tasks/{_quote(task_id)}/result")

    async def task_stop(self, task_id: str) -> None:
        await self._call("POST", f"/tasks/{_quote(task_id)}/cancel")

    async def task_lookup(self, idempotency_key: str) -> str | None:
        data = await self._object("GET", f"/tasks?idempotency_key={quote(idempotency_key)}")
        tasks = data.get("tasks")
        if isinstance(tasks, list) and tasks and isinstance(tasks[0], dict):
            return str(tasks[0].get("id")) if tasks[0].get("id") else None
        return None

    async def task_logs(self, task_id: str) -> str:
        data = await self._call("GET", f"/tasks/{_quote(task_id)}/logs")
        return self._scrub(data.decode("utf-8", errors="replace"))


class RestQpuConnector(RestClient[RestConfig]):
    """A QPU service reached over HTTP(S) with a bearer token."""

    Config = RestConfig

    def __init__(self, location: str, config: RestConfig) -> None:
        super().__init__(location, config, Endpoint.of(config))

    async def start(self) -> None:
        """Resolve the token and open the one HTTP session this connector uses."""
        if self._session is None:
            await self._open(resolve_secret(self.config.token))


def _quote(task_id: str) -> str:
    return quote(task_id, safe="")


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _excerpt(data: bytes, limit: int = 80) -> str:
    """The start of an unexpected answer, quoted (never the whole of a big body)."""
    text = data.decode("utf-8", errors="replace")
    return repr(text[:limit]) + (f" ... ({len(data)} bytes)" if len(text) > limit else "")


def _transient(status: int, data: bytes) -> bool:
    """5xx is worth a retry, except a service that says the QPU is offline."""
    return status in RETRY_STATUSES and _error_text(data)[1] != "offline"


def _error_text(data: bytes) -> tuple[str, str | None]:
    """The service's error message and code from a JSON error body (or its raw text)."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body.get("code")
        return body["error"][:MAX_MESSAGE], code if isinstance(code, str) else None
    text = data.decode("utf-8", errors="replace").strip()
    return (text[:MAX_MESSAGE] or "no message"), None


def _describe(exc: BaseException, timeout: float) -> str:
    """A connection failure in a few words (aiohttp's own text, never request headers)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within the timeout of {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
