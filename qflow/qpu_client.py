"""The step side of qflow's QPU gateway: the client a step's quantum implementation uses.

When qflow places a quantum candidate on a QPU it runs the step's quantum implementation with
two environment variables and nothing else of the QPU: ``QFLOW_QPU_URL`` (the gateway) and
``QFLOW_QPU_TOKEN`` (a bearer token that lets the step submit and follow *its own* tasks and
dies with its lease). This module speaks that API (the emulator's shape, docs/emulator.md) so
that a step's script does not have to::

    from qflow.qpu_client import QpuClient, solve_qubo

    client = QpuClient.from_env(timeout=270)          # the whole exchange, then cancel
    result = solve_qubo(client, [[0, 0, -1], [0, 1, 2], [1, 1, -1]], 2, num_reads=100)
    print(result["best_sample"], result["best_energy"])

Every submission carries an idempotency key, so a retried submission never runs twice;
transient failures (connection errors, timeouts, 503/504) are retried with bounded backoff;
anything else raises :class:`QpuClientError` with a message that says what went wrong. The
protocol and a guide are in docs/quantum-steps.md.

Standard library only and no other qflow module: importing it costs a few milliseconds and
pulls in nothing heavy, so it also runs where qflow is installed without its dependencies
(``pip install --no-deps qflow``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict, cast

__all__ = [
    "QpuClient",
    "QpuClientError",
    "QpuTaskFailed",
    "QpuTimeout",
    "QuboResult",
    "QuboTask",
    "solve_qubo",
]


class QuboTask(TypedDict):
    """The body of a ``qubo`` task: minimise Σ value·x_i·x_j over x ∈ {0, 1}^num_variables.

    Every QPU connector takes it; the gateway checks it (one validator:
    :func:`qflow.connectors.qubo.parse_qubo`) before a connector sees it.
    """

    kind: Literal["qubo"]
    qubo: list[list[float]]
    """``[i, j, value]`` terms, integer indices from 0; ``i == j`` is a linear term."""
    num_variables: int
    num_reads: NotRequired[int]
    num_sweeps: NotRequired[int]
    """Annealing sweeps per read, for QPUs that anneal (the emulator); others ignore it."""
    seed: NotRequired[int]
    backend: NotRequired[str]
    """The QPU's backend to run on; omitted: the location's."""


class QuboResult(TypedDict):
    """The result of a completed ``qubo`` task (QPUs may add fields of their own)."""

    kind: Literal["qubo"]
    best_sample: list[int]
    """One 0/1 per variable: the lowest-energy assignment measured."""
    best_energy: float
    solver: str
    """What produced it, e.g. ``emulator:superconducting/simulated-annealing``."""
    num_reads: int


URL_ENV = "QFLOW_QPU_URL"
TOKEN_ENV = "QFLOW_QPU_TOKEN"
STATES = ("queued", "running", "completed", "failed", "cancelled")
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
RETRY_STATUSES = frozenset({503, 504})
"""Answers worth another attempt: the gateway itself (or a proxy before it) is busy or
restarting. Not 502: the gateway answers 502 when the QPU behind it failed after the
gateway's own retries, and retrying those here would multiply them. Not 4xx: the request
itself was refused."""
ATTEMPTS = 5
"""Attempts per request (the first one included)."""
BACKOFF_S = 0.2
"""Seconds before the first retry, doubled for each further one (at most MAX_BACKOFF_S)."""
MAX_BACKOFF_S = 5.0
REQUEST_TIMEOUT_S = 30.0
"""Longest wait for one answer."""
POLL_FIRST_S = 0.02
POLL_MAX_S = 1.0
"""Polling a task's state: first after POLL_FIRST_S, then 1.5 times longer each time, at
most POLL_MAX_S (a short task is seen at once, a long one costs one request a second)."""
CANCEL_TIMEOUT_S = 5.0


class QpuClientError(SystemExit):
    """The client gives up; ``str(error)`` says why (``status``: the HTTP status, if any).

    A :class:`SystemExit`: uncaught, it ends the step's script with this message on stderr
    and exit status 1, without a traceback, and qflow then falls back to the step's classical
    implementation. ``except Exception`` does not catch it: catch ``QpuClientError``.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class QpuTimeout(QpuClientError):
    """The client's ``timeout`` ran out (a task still running then was cancelled)."""


class QpuTaskFailed(QpuClientError):
    """The task ended ``failed`` or ``cancelled``; ``task`` is its last state."""

    def __init__(self, message: str, task: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.task = dict(task)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would send the step's token to the new address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class QpuClient:
    """One step's client of the QPU gateway (or of a service with the same API).

    ``timeout``: seconds, from now, for everything this client does (None: no limit); past
    it, :meth:`wait` cancels its task and raises :class:`QpuTimeout`. ``attempts``,
    ``backoff`` and ``request_timeout`` bound the retries of one request; ``log`` receives
    one line per retry (default: stderr).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float | None = None,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF_S,
        request_timeout: float = REQUEST_TIMEOUT_S,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not url or not token:
            raise QpuClientError("QPU client: the gateway's URL and the step's token are needed")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.log = log or _to_stderr
        self._opener = urllib.request.build_opener(_NoRedirect)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> QpuClient:
        """The client of the QPU qflow placed this step on (``QFLOW_QPU_URL``/``_TOKEN``)."""
        env = os.environ if environ is None else environ
        url, token = env.get(URL_ENV), env.get(TOKEN_ENV)
        if not url or not token:
            raise QpuClientError(
                f"QPU client: {URL_ENV} and {TOKEN_ENV} are not set; qflow sets them for the "
                "quantum implementation of a step it placed on a QPU (run the step's classical "
                "implementation otherwise)"
            )
        return cls(url, token, **options)

    # -- one method per route ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: the QPU's status (``online``, ``running``, ``pending``...)."""
        return _object(self._call("GET", "/v1/status"), "the QPU's status")

    def submit(self, task: Mapping[str, Any], key: str | None = None) -> str:
        """``POST /v1/tasks``: start ``task``; its id. ``key`` (default: a new random one)
        is the Idempotency-Key: the same key again answers the same task, never a new one."""
        key = key or uuid.uuid4().hex
        created = self._call("POST", "/v1/tasks", dict(task), key=key)
        return _field(created, "id", str, "the submitted task")

    def task(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/tasks/{id}``: the task (``state``, ``message``, ``qpu_seconds``...)."""
        info = self._call("GET", _task_path(task_id))
        state = _field(info, "state", str, "the task")
        if state not in STATES:
            raise QpuClientError(f"QPU client: the task's state {state!r} is none of {STATES}")
        return info

    def result(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/tasks/{id}/result``: the result of a completed task."""
        return _object(self._call("GET", _task_path(task_id, "result")), "the task's result")

    def cancel(self, task_id: str) -> dict[str, Any]:
        """``POST /v1/tasks/{id}/cancel``: stop the task; it in its final state (idempotent)."""
        return _object(self._call("POST", _task_path(task_id, "cancel")), "the cancelled task")

    def logs(self, task_id: str) -> str:
        """``GET /v1/tasks/{id}/logs``: the task's events, one line each."""
        return self._call("GET", _task_path(task_id, "logs"), text=True)

    # -- the usual sequence ------------------------------------------------------------------
    def wait(self, task_id: str) -> dict[str, Any]:
        """Poll the task until it ends (backoff: POLL_FIRST_S × 1.5ⁿ, at most POLL_MAX_S);
        its final state. Past the client's timeout: cancel it, raise :class:`QpuTimeout`."""
        delay, state = POLL_FIRST_S, "unfinished"
        try:
            while True:
                info = self.task(task_id)
                state = info["state"]
                if state in FINAL_STATES:
                    return info
                if self.deadline is not None and time.monotonic() + delay >= self.deadline:
                    raise QpuTimeout("out of time")
                time.sleep(delay)
                delay = min(delay * 1.5, POLL_MAX_S)
        except QpuTimeout:
            self.cancel_quietly(task_id)
            raise QpuTimeout(
                f"QPU client: task {task_id} is still {state} after the timeout of "
                f"{self.timeout:g} s; cancelled it"
            ) from None

    def run(self, task: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Submit ``task``, wait for its end and return its result; :class:`QpuTaskFailed`
        when it ends ``failed`` or ``cancelled``."""
        task_id = self.submit(task, key)
        info = self.wait(task_id)
        if info["state"] != "completed":
            why = info.get("message") or "no reason given"
            raise QpuTaskFailed(f"QPU client: task {task_id} {info['state']}: {why}", info)
        return self.result(task_id)

    def cancel_quietly(self, task_id: str) -> None:
        """Best effort, one short attempt: qflow also stops the step's unfinished tasks when
        it releases the lease."""
        with contextlib.suppress(QpuClientError):
            self._call("POST", _task_path(task_id, "cancel"), attempts=1, budget=False)

    # -- HTTP ----------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        text: bool = False,
        attempts: int | None = None,
        budget: bool = True,
    ) -> Any:
        """One request, retried while it fails transiently; the answer's JSON (or text).

        ``budget``: the request counts against the client's timeout (else it gets
        CANCEL_TIMEOUT_S of its own).
        """
        url = self.url + path
        where = f"{method} {url}"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if key:
            headers["Idempotency-Key"] = key  # a retried submission never makes a second task
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            timeout = self._remaining(where) if budget else CANCEL_TIMEOUT_S
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with self._opener.open(request, timeout=timeout) as answer:
                    raw = answer.read()
                break
            except urllib.error.HTTPError as exc:
                detail = _error_detail(_read_quietly(exc))
                if exc.code not in RETRY_STATUSES or attempt == attempts:
                    again = f" after {attempt} attempts" if attempt > 1 else ""
                    message = f"{where}: the QPU gateway answered {exc.code}{again}: {detail}"
                    raise QpuClientError(f"QPU client: {message}", exc.code) from None
                problem = f"HTTP {exc.code}: {detail}"
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
                problem = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
                if attempt == attempts:
                    raise QpuClientError(
                        f"QPU client: {where}: the QPU gateway is unreachable after {attempt} "
                        f"attempt(s): {problem}"
                    ) from None
            delay = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)
            self.log(f"QPU client: {where}: {problem}; retrying in {delay:g} s")
            time.sleep(min(delay, self._remaining(where)) if budget else delay)
        if text:
            return raw.decode(errors="replace")
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise QpuClientError(
                f"QPU client: {where}: the QPU gateway's answer is not JSON: {raw[:80]!r}"
            ) from None

    def _remaining(self, where: str) -> float:
        """Seconds one request may take: REQUEST_TIMEOUT_S, less if the deadline is near."""
        if self.deadline is None:
            return self.request_timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise QpuTimeout(
                f"QPU client: out of time (timeout of {self.timeout:g} s) before {where}"
            )
        return min(self.request_timeout, left)


def solve_qubo(
    client: QpuClient,
    terms: Iterable[Sequence[float]],
    num_variables: int,
    *,
    num_reads: int | None = None,
    num_sweeps: int | None = None,
    seed: int | None = None,
    backend: str | None = None,
    key: str | None = None,
) -> QuboResult:
    """Minimise a QUBO on the QPU: one task of kind ``qubo`` (docs/connectors.md).

    ``terms``: ``[i, j, value]`` with ``i <= j`` (``i == j``: linear), variables ``0 ..
    num_variables-1``; the options left at None are not sent (the QPU's defaults). Returns
    the result, checked: ``best_sample`` (one 0/1 per variable), ``best_energy``,
    ``solver``, and whatever else the QPU reports.
    """
    options = {"num_reads": num_reads, "num_sweeps": num_sweeps, "seed": seed, "backend": backend}
    task = QuboTask(
        kind="qubo",
        qubo=[[int(i), int(j), float(v)] for i, j, v in terms],
        num_variables=int(num_variables),
        **{name: value for name, value in options.items() if value is not None},  # type: ignore[typeddict-item]
    )
    result = client.run(task, key)
    sample = _field(result, "best_sample", list, "the task's result")
    _field(result, "best_energy", (int, float), "the task's result")
    if len(sample) != num_variables or any(bit not in (0, 1) for bit in sample):
        raise QpuClientError(
            f"QPU client: the task's best_sample is not one 0/1 per variable "
            f"({num_variables}): {str(sample)[:200]}"
        )
    return cast(QuboResult, result)


def _task_path(task_id: str, action: str = "") -> str:
    path = "/v1/tasks/" + urllib.parse.quote(task_id, safe="")
    return f"{path}/{action}" if action else path


def _read_quietly(answer: urllib.error.HTTPError) -> bytes:
    """An error answer's body; empty when it cannot be read (connection lost)."""
    try:
        return answer.read()
    except (OSError, http.client.HTTPException):
        return b""


def _error_detail(raw: bytes) -> str:
    """The ``error`` of a JSON error answer, else the start of the raw text."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else (raw[:500].decode(errors="replace") or "no message")


def _object(answer: Any, what: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise QpuClientError(f"QPU client: {what} is not a JSON object: {str(answer)[:200]}")
    return answer


def _field(answer: Any, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``answer[name]`` when ``answer`` is a JSON object with it of the right type."""
    if not isinstance(answer, dict) or not isinstance(answer.get(name), kind):
        raise QpuClientError(f"QPU client: {what} has no valid {name!r}: {str(answer)[:200]}")
    return answer[name]
