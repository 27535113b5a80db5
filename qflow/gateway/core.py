"""The gateway itself: leases on virtual QPUs, the tasks steps start through them.

It runs on one event loop. Placement (embedded) or :mod:`qflow.gateway.http` (site-wide)
calls it; it starts each location's quantum connector on first use, journals every task
before it exists and stops a lease's unfinished tasks by id when the lease ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import secrets
import time
from typing import Any

from qflow.connectors.qubo import parse_qubo
from qflow.connectors.task_errors import TaskRefused
from qflow.gateway.leases import (
    ACCOUNTING_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    GatewayTask,
    Lease,
    LeaseRefused,
    LeaseSummary,
    QpuSlots,
    task_seconds,
)
from qflow.quantum import (
    FINAL_STATES,
    QpuStatus,
    QuantumConnector,
    QuantumLocationConfig,
    TaskBody,
    TaskInfo,
)
from qflow.rundir.journal import NO_JOURNAL, Journal
from qflow.secrets import redact

_logger = logging.getLogger("qflow.gateway")

WITHDRAWN_KEPT = 10_000
"""How many withdrawn lease keys are remembered (a lease asked for after its withdrawal)."""


class Gateway:
    """Leases and task forwarding for a set of quantum connectors (runs on one event loop).

    ``journal``: where the QPU tasks it starts are recorded before they exist (the run's
    journal when the gateway is embedded in ``qflow run``): a crashed run's tasks are then
    stopped at the QPU by ``qflow run --resume`` or ``qflow clean``.
    """

    def __init__(
        self,
        connectors: dict[str, QuantumConnector[QuantumLocationConfig]],
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

    # -- leases ---------------------------------------------------------------------------
    async def _connector(self, location: str) -> QuantumConnector[QuantumLocationConfig]:
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
            await asyncio.wait_for(self.refresh(lease, task), ACCOUNTING_TIMEOUT_S)
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

    async def refresh(self, lease: Lease, task: GatewayTask) -> TaskInfo:
        """Current state of a task; accounts its QPU-seconds once it is final."""
        info = await self.connectors[lease.location].task_status(task.qpu_id)
        task.info = info
        if info.state in FINAL_STATES and not task.accounted:
            task.accounted = True
            self.journal.ended(task.resource)
            seconds = task_seconds(info)
            if seconds is not None:
                lease.qpu_seconds += seconds
                self.slots[lease.location].task_seconds.append(seconds)
        return info

    async def start_task(self, lease: Lease, task: dict[str, Any], key: str) -> str:
        """Start a step's task at the QPU (idempotent per key); returns the gateway's id.

        Raises :class:`TaskRefused` for a task of a kind the QPU does not take, or a ``qubo``
        task of the wrong shape, before the QPU is called."""
        gw_id = f"{lease.id}-{key}"
        if gw_id in lease.tasks:
            return gw_id
        connector = self.connectors[lease.location]
        body = checked_task(task, connector)
        vendor_key = gw_id
        resource = self.journal.intend(
            "qpu-task", lease.location, {"idempotency_key": vendor_key}, step=lease.step
        )
        submitted = time.time()
        try:
            qpu_id = await connector.task_start(body, vendor_key)
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
    def lease_of(self, token: str) -> Lease | None:
        """The lease a step token belongs to (None: unknown or expired)."""
        return self._by_token.get(token)

    async def close(self) -> None:
        for lease_id in list(self.leases):
            await self.release(lease_id)
        for location in self._started:
            await self.connectors[location].stop()


def checked_task(task: dict[str, Any], connector: QuantumConnector[Any]) -> TaskBody:
    """``task`` with its kind (default ``qubo``) one the QPU takes, and a ``qubo`` task's
    fields valid; raises :class:`TaskRefused` saying what is wrong."""
    kind = task.get("kind", "qubo")
    if kind not in connector.task_kinds:
        raise TaskRefused(
            f"QPU {connector.location} takes no task of kind {kind!r} "
            f"(it takes: {', '.join(connector.task_kinds)})"
        )
    if kind == "qubo":
        parse_qubo(task)
    return {**task, "kind": kind}


def _mean(values: collections.deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


async def _quietly(coro: Any) -> Any:
    """A best-effort lookup: its answer within one request timeout, else None."""
    try:
        return await asyncio.wait_for(coro, REQUEST_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - best effort
        return None
