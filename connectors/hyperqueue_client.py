"""One location's connection to a HyperQueue server, on a thread of its own.

Every HyperQueue client call is a blocking FFI call that holds the GIL while it waits: they
all run on one dedicated thread per location, which owns the client connection, so the event
loop never blocks on them. The 0.27 Python API has submit, wait, forget and stop-server but no
cancel (see hyperqueue.py for how a task is cancelled without it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

CLIENT_CALL_TIMEOUT_S = 60.0
"""Longest wait for one HyperQueue client call (submit, status, forget)."""


class HyperQueueError(RuntimeError):
    """The HyperQueue server refused or failed a request (not reachable, submit refused)."""


def hq_message(exc: BaseException) -> str:
    """A HyperQueue FFI error without the Rust backtrace it carries under RUST_BACKTRACE."""
    text = str(exc).split("Stack backtrace:")[0].strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or repr(exc)


class _StatusReceived(Exception):  # noqa: N818 - control flow, not an error
    """Raised from the progress callback to end ``wait_for_jobs`` after its first report."""


class HqClient:
    """A location's HyperQueue client: async calls, each run on the client thread."""

    def __init__(self, location: str, server_dir: str) -> None:
        self.location = location
        self.server_dir = server_dir
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._client: Any = None

    @property
    def used(self) -> bool:
        """Whether a call was made (the client thread exists) since the last :meth:`close`."""
        return self._executor is not None

    async def connect(self) -> None:
        """Connect now: fails clearly when no server runs at ``server_dir``."""
        await self._call(self._connect)

    async def submit(self, job: Any) -> int:
        """Submit a ``hyperqueue.Job``; its job id."""
        return await self._call(self._submit, job)

    async def status(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Task counts per job (``completed``, ``failed``, ...); unknown jobs are missing."""
        return await self._call(self._status, job_ids)

    async def forget(self, job_ids: list[int]) -> None:
        """Drop finished jobs from the server's memory."""
        await self._call(self._forget, job_ids)

    async def failed_reason(self, job_id: int) -> str | None:
        """HyperQueue's error text for the job's failed task, if any."""
        return await self._call(self._failed_reason, job_id)

    def close(self) -> None:
        """Drop the connection and end the client thread (a call in flight is abandoned)."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            self._client = None
            executor.shutdown(wait=False)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"qflow-hq-{self.location}"
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        return await asyncio.wait_for(future, CLIENT_CALL_TIMEOUT_S)

    def _connect(self) -> Any:
        """(client thread) The client connection, opened on first use."""
        if self._client is None:
            try:
                from hyperqueue import Client
            except ImportError as exc:
                raise HyperQueueError(
                    f"location {self.location}: the hyperqueue package is not installed ({exc}); "
                    "pip install 'qflow[hyperqueue]'"
                ) from None

            if not os.path.isdir(self.server_dir):
                raise HyperQueueError(
                    f"location {self.location}: server_dir {self.server_dir} does not exist "
                    "(start the server with `hq server start --server-dir ...` or a LocalCluster)"
                )
            try:
                self._client = Client(str(self.server_dir))
            except Exception as exc:
                raise HyperQueueError(
                    f"location {self.location}: cannot connect to the HyperQueue server of "
                    f"{self.server_dir}: {hq_message(exc)}"
                ) from None
        return self._client

    def _submit(self, job: Any) -> int:
        """(client thread) Submit, reconnecting once if the connection broke."""
        try:
            return int(self._connect().submit(job).id)
        except HyperQueueError:
            raise
        except Exception:
            self._client = None
        try:
            return int(self._connect().submit(job).id)
        except HyperQueueError:
            raise
        except Exception as exc:
            self._client = None
            raise HyperQueueError(
                f"location {self.location}: HyperQueue refused the job: {hq_message(exc)}"
            ) from None

    def _status(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """(client thread) Task counts per job, from one server round trip.

        ``wait_for_jobs`` reports the jobs' state to its progress callback before it first
        sleeps; raising from the callback ends it there, which makes a cheap status query.
        Jobs the server does not know are missing from the result.
        """
        client = self._connect()
        got: dict[int, dict[str, Any]] = {}

        def callback(status: dict[int, dict[str, Any]]) -> None:
            got.update(status)
            raise _StatusReceived

        try:
            client.connection.wait_for_jobs(job_ids, callback)
        except _StatusReceived:
            pass
        except Exception:
            self._client = None
            raise
        return got

    def _forget(self, job_ids: list[int]) -> None:
        """(client thread) Drop finished jobs from the server's memory."""
        client = self._connect()
        for job_id in job_ids:
            with contextlib.suppress(Exception):
                client.connection.forget_job(job_id)

    def _failed_reason(self, job_id: int) -> str | None:
        """(client thread) HyperQueue's error text for the job's failed task, if any."""
        failed = self._connect().connection.get_failed_tasks([job_id]).get(job_id, {})
        for ctx in failed.values():
            return hq_message(ctx.error)
        return None
