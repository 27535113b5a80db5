"""Fault injection: the service misbehaving on purpose, so clients' retries are tested.

The modes are described in docs/emulator.md ("Faults and retries"); the HTTP layer asks
:meth:`Faults.take` for every request and injects what it returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
import struct
import time
from typing import Any

from aiohttp import web

from qflow.emulator.errors import ApiError
from qflow.emulator.kinds import is_int

_logger = logging.getLogger("qflow.emulator")

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
        if self.count is not None and not (is_int(self.count) and self.count >= 0):
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


def reset_connection(request: web.Request) -> None:
    """Drop the TCP connection with a RST (SO_LINGER 0), without an answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
