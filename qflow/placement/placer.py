"""The mapping M of (W, L, M): where each step execution runs, decided when it is ready.

Every step execution is placed before cwltool builds its job, because the placement decides
which implementation runs (a quantum candidate's quantum tool on a QPU lease, its classical
``run`` elsewhere). A placement holds what it chose — a slot of a classical location, or a
virtual-QPU lease (plus a slot of ``run_on`` if its client runs there) — until it is released.

Two rules (``placement:`` of a binding, else of the binding's first location, else policy):

* ``first``: the quantum candidates in binding order, taken at once if one is free, else
  waited for together (each up to its ``max_wait``); then — a fallback, with the reasons —
  the classical candidates in binding order, waiting for whichever frees first (spill-over).
* ``earliest-finish``: every candidate's expected finish (:mod:`qflow.placement.estimate`),
  the classical implementation of a quantum candidate competing as one more candidate; the
  earliest is taken, waiting for it no longer than about twice its expected start before the
  decision is made again with what changed meanwhile. A QPU that cannot be had (offline,
  unreachable, no vQPU within ``max_wait``) drops out with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING

from qflow.gateway.leases import LeaseRefused, LeaseSummary
from qflow.placement.estimate import (
    CLIENT_OVERHEAD_S,
    PRIOR_S,
    Estimate,
    first_free,
    qpu_start,
)
from qflow.placement.history import History
from qflow.placement.model import Lease, NoPlacement, Placement
from qflow.placement.qpus import QpuLeases
from qflow.placement.slots import SlotBoard
from qflow.rundir.journal import NO_JOURNAL, Journal

if TYPE_CHECKING:
    from qflow.deployment import Deployment

_logger = logging.getLogger("qflow")

REDECIDE_MIN_S = 1.0
"""Earliest finish waits for its choice at least this long before deciding again."""


class Placer:
    """Owns M for one run: candidates, slots, QPU leases, estimates, the decisions."""

    def __init__(
        self, deployment: Deployment, journal: Journal = NO_JOURNAL, history: History | None = None
    ) -> None:
        self.deployment = deployment
        self.history = history or History(None, "")
        self.qpus = QpuLeases(deployment, journal)
        self.slots = SlotBoard({n: c.slots for n, c in deployment.locations.items()})
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._active: dict[int, tuple[str, float, float]] = {}
        """Placement number -> (location, when it was placed, its expected run time)."""
        self._closed = False

    # -- what the bindings say ---------------------------------------------------------------
    def is_quantum(self, location: str) -> bool:
        return self.qpus.is_quantum(location)

    def has_classical_candidate(self, step: str) -> bool:
        """Whether a quantum candidate has somewhere to fall back to."""
        return any(not self.is_quantum(c) for c in self.deployment.candidates(step))

    def _request(self, step: str, iteration: int | None, fallback: str | None) -> _Request:
        candidates = self.deployment.candidates(step)
        quantum = [] if fallback else [c for c in candidates if self.is_quantum(c)]
        classical = [c for c in candidates if not self.is_quantum(c)]
        reasons = [fallback] if fallback else []
        return _Request(step, iteration, time.time(), quantum, classical, reasons)

    # -- placing -----------------------------------------------------------------------------
    def place_now(self, step: str, iteration: int | None) -> Placement | None:
        """The placement of a step with classical candidates only, if a slot is free right
        now (any thread; no event-loop round trip); None: use :meth:`place`."""
        request = self._request(step, iteration, None)
        if request.quantum:
            return None
        if self.deployment.placement_for(step) == "first":
            location = self.slots.try_take(request.classical)
            reason = "first candidate with a free slot"
            estimates = None
        else:
            ranked = sorted(self._classical_estimates(step, request.classical), key=_finish_order)
            location = self.slots.try_take([ranked[0].location])
            reason = _earliest_reason(ranked)
            estimates = _estimates(ranked)
        if location is None:
            return None
        return self._granted(request, location, reason=reason, estimates=estimates)

    async def place(
        self, step: str, iteration: int | None, *, fallback_reason: str | None = None
    ) -> Placement:
        """Place one execution (on the event loop), waiting as the rule says.

        ``fallback_reason``: the quantum execution failed; only classical candidates remain.
        """
        request = self._request(step, iteration, fallback_reason)
        if self.deployment.placement_for(step) == "first":
            return await self._first(request)
        return await self._earliest(request)

    async def _first(self, request: _Request) -> Placement:
        if request.quantum:
            granted = await self._first_lease(request)
            if granted is not None:
                location, lease = granted
                why = "first quantum candidate with a free virtual QPU"
                return await self._on_qpu(request, location, lease, why)
        if not request.classical:
            raise NoPlacement(f"no location can take {request.step}: {request.why()}")
        classical = await self.slots.take(request.classical)
        assert classical is not None  # no timeout: it waited until one was free
        return self._granted(request, classical, fallback_reason=request.why() or None,
                             reason="first classical candidate with a free slot")  # fmt: skip

    async def _first_lease(self, request: _Request) -> tuple[str, Lease] | None:
        """A lease on the first QPU free now, else on whichever frees first within its
        ``max_wait``; None (with the reasons) if none does."""
        quantum, step = request.quantum, request.step
        waiting: list[str] = []
        for location in quantum if len(quantum) > 1 else []:  # probes keep binding order
            try:
                return location, await self.qpus.lease(location, step, 0.0)
            except LeaseRefused as exc:
                if exc.busy and self.qpus.config(location).max_wait > 0:
                    waiting.append(location)
                else:
                    request.reasons.append(str(exc))
        if len(quantum) == 1:
            waiting = quantum
        tasks = {
            asyncio.ensure_future(self.qpus.lease(loc, step, self.qpus.config(loc).max_wait)): loc
            for loc in waiting
        }
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    location = tasks.pop(task)
                    if task.exception() is None:
                        return location, task.result()
                    request.reasons.append(str(task.exception()))
            return None
        finally:
            await _cancel_leases(self.qpus, tasks)

    async def _earliest(self, request: _Request) -> Placement:
        waited: dict[str, float] = {}
        while True:
            ranked = await self._estimates(request)
            if not ranked:
                raise NoPlacement(
                    f"no location can take {request.step}: {request.why() or 'no candidate'}"
                )
            best, reason, estimates = ranked[0], _earliest_reason(ranked), _estimates(ranked)
            budget = max(REDECIDE_MIN_S, 2 * best.start_s)
            if not self.is_quantum(best.location):
                location = await self.slots.take([best.location], budget)
                if location is None:
                    continue  # what was expected did not happen: decide again
                fallback = None
                if request.quantum or request.reasons:
                    fallback = request.why(f"expected to finish first here: {reason}")
                return self._granted(request, location, fallback_reason=fallback,
                                     reason=reason, estimates=estimates)  # fmt: skip
            location = best.location
            max_wait = self.qpus.config(location).max_wait
            began = time.monotonic()
            try:
                wait = max(0.0, min(budget, max_wait - waited.get(location, 0.0)))
                lease = await self.qpus.lease(location, request.step, wait)
            except LeaseRefused as exc:
                waited[location] = waited.get(location, 0.0) + time.monotonic() - began
                if not exc.busy or waited[location] >= max_wait:
                    request.dropped[location] = str(exc)
                continue
            return await self._on_qpu(request, location, lease, reason, estimates)

    async def _on_qpu(
        self,
        request: _Request,
        location: str,
        lease: Lease,
        reason: str,
        estimates: dict[str, float] | None = None,
    ) -> Placement:
        """A granted lease, plus a slot of ``run_on`` for the client command if it has one."""
        run_on = self.qpus.config(location).run_on
        if run_on:
            try:
                await self.slots.take([run_on])
            except BaseException:
                await self.qpus.release(lease)
                raise
        return self._granted(request, location, slot=run_on, lease=lease, reason=reason,
                             estimates=estimates)  # fmt: skip

    def _granted(
        self,
        request: _Request,
        location: str,
        *,
        slot: str | None = None,
        lease: Lease | None = None,
        fallback_reason: str | None = None,
        reason: str = "",
        estimates: dict[str, float] | None = None,
    ) -> Placement:
        placement = Placement(
            number=next(self._numbers),
            step=request.step,
            iteration=request.iteration,
            location=location,
            quantum=lease is not None,
            requested=request.requested,
            slot=slot if lease is not None else location,
            lease=lease,
            fallback_reason=fallback_reason,
            reason=reason,
            estimates=estimates,
        )
        expected = self._run_estimate(request.step, location)[0]
        with self._lock:
            self._active[placement.number] = (placement.slot or location, time.time(), expected)
        return placement

    # -- estimates ---------------------------------------------------------------------------
    def _run_estimate(self, step: str, location: str) -> tuple[float, str]:
        measured = self.history.run_seconds(step, location)
        if measured is not None:
            return measured, "measured"
        hint = self.deployment.expected_seconds(step, location)
        if hint is not None:
            return hint, "hint"
        return PRIOR_S, "prior"

    def _remaining(self, location: str) -> list[float]:
        now = time.time()
        with self._lock:
            return [exp - (now - since) for loc, since, exp in self._active.values()
                    if loc == location]  # fmt: skip

    def _classical_estimates(self, step: str, classical: list[str]) -> list[Estimate]:
        estimates = []
        elsewhere = [self.history.run_seconds(step, c) for c in classical]
        known = [s for s in elsewhere if s is not None]
        for order, location in enumerate(classical):
            run, source = self._run_estimate(step, location)
            if source == "prior" and known:
                run, source = min(known), "other location"
            start = first_free(
                self._remaining(location),
                self.slots.free(location),
                self.slots.waiting(location),
                run,
            )
            start += self.history.queue_seconds(location) or 0.0
            estimates.append(Estimate(location, start, run, source, order))
        return estimates

    async def _qpu_estimate(self, step: str, location: str, order: int) -> Estimate | str:
        """The estimate, or why the QPU cannot take the step now."""
        info = await self.qpus.info(location)
        if not info.get("online", False):
            return str(info.get("detail") or f"QPU {location} is offline")
        task_s = (
            self.history.task_seconds(location)
            or info.get("mean_task_s")
            or info.get("task_seconds")
        )
        run, source = self._run_estimate(step, location)
        if source == "prior" and task_s is not None:
            run, source = task_s + CLIENT_OVERHEAD_S, "qpu"
        start = qpu_start(info, task_s, run)
        return Estimate(location, start, run, source, order)

    async def _estimates(self, request: _Request) -> list[Estimate]:
        """Every candidate still in the running, earliest finish first (ties: binding order).
        A QPU that cannot take the step now is dropped, with why, into ``request.dropped``."""
        order = {loc: i for i, loc in enumerate(self.deployment.candidates(request.step))}
        live = [c for c in request.classical if c not in request.dropped]
        ranked = self._classical_estimates(request.step, live)
        quantum = [q for q in request.quantum if q not in request.dropped]
        answers = await asyncio.gather(
            *(self._qpu_estimate(request.step, q, order[q]) for q in quantum)
        )
        for location, answer in zip(quantum, answers, strict=True):
            if isinstance(answer, str):
                request.dropped[location] = answer
            else:
                ranked.append(answer)
        ranked = [dataclasses.replace(e, order=order[e.location]) for e in ranked]
        return sorted(ranked, key=_finish_order)

    # -- the end of an execution ---------------------------------------------------------------
    def observe(self, placement: Placement, *, queued_s: float, run_s: float) -> None:
        """A successful execution's figures, for later estimates (any thread)."""
        self.history.add_run(placement.step, placement.location, run_s)
        if not placement.quantum:
            self.history.add_queue(placement.location, queued_s)

    def observe_tasks(self, placement: Placement, summary: LeaseSummary) -> None:
        for task in summary.tasks:
            if task.qpu_seconds > 0:
                self.history.add_task(placement.location, task.qpu_seconds)

    def release_slot(self, placement: Placement) -> None:
        """Give back the classical slot a placement holds (any thread)."""
        with self._lock:
            self._active.pop(placement.number, None)
        if placement.slot is not None:
            self.slots.give_back(placement.slot)

    async def release(self, placement: Placement) -> LeaseSummary | None:
        """Give back all a placement holds; a QPU lease's summary (None without a lease)."""
        self.release_slot(placement)
        if placement.lease is None:
            return None
        summary = await self.qpus.release(placement.lease)
        self.observe_tasks(placement, summary)
        return summary

    async def close(self) -> None:
        """Release what is still held (an interrupted run); keep the measured figures."""
        await self.qpus.close()
        if not self._closed:
            self._closed = True
            self.history.save()


@dataclasses.dataclass
class _Request:
    """One execution to place: its candidates by kind, and why candidates were passed over."""

    step: str
    iteration: int | None
    requested: float
    quantum: list[str]
    classical: list[str]
    reasons: list[str]
    """Why quantum candidates were passed over (a failed quantum execution, refusals)."""
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    """Candidates earliest finish stopped considering, and why."""

    def why(self, *more: str) -> str:
        return "; ".join([*self.reasons, *self.dropped.values(), *more])


def _finish_order(estimate: Estimate) -> tuple[float, int]:
    return estimate.finish_s, estimate.order


def _estimates(ranked: list[Estimate]) -> dict[str, float]:
    return {e.location: round(e.finish_s, 3) for e in ranked}


def _earliest_reason(ranked: list[Estimate]) -> str:
    others = ", ".join(f"{e.location} {e.finish_s:.1f} s" for e in ranked[1:])
    return f"earliest finish: {ranked[0].describe()}" + (f"; then {others}" if others else "")


async def _cancel_leases(qpus: QpuLeases, tasks: dict[asyncio.Task[Lease], str]) -> None:
    """Stop lease requests still waiting; give back any granted meanwhile."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            lease = await task
            await qpus.release(lease)
