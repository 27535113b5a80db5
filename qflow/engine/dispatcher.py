"""Runs submitted jobs on their connectors, on one asyncio event loop in its own thread.

The cwltool side (the executor thread) calls :meth:`Dispatcher.submit` and returns at once.
On the loop, each step execution is placed by the :class:`~qflow.mapping.Mapper`, run by its
location's connector (retried per location) and recorded in the
:class:`~qflow.ledger.Ledger`. Finished executions come back through a queue that the
executor thread drains: output collection and cwltool's callbacks run there, so all of
cwltool's state is touched by one thread and a completion costs one thread hop, not two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from qflow.connector import Connector, JobOutcome, JobSpec, LocationConfig, connector_class
from qflow.connectors.local import LocalConnector
from qflow.engine.placement import NoPlacement, Placement
from qflow.engine.qpu_access import QpuAccess
from qflow.engine.reuse import ReuseStore
from qflow.ledger import Ledger, StepRecord
from qflow.mapping import Mapper

if TYPE_CHECKING:
    from qflow.deployment import Deployment
    from qflow.engine.job import ConnectorJob

_logger = logging.getLogger("qflow")

CANCEL_TIMEOUT_S = 60.0
"""Longest wait for connectors to clean up in-flight jobs after an interrupt."""


QPU_URL_ENV = "QFLOW_QPU_URL"
QPU_TOKEN_ENV = "QFLOW_QPU_TOKEN"
"""What a step's client command gets to reach its QPU: the gateway and a per-step token."""


@dataclasses.dataclass(frozen=True)
class Completion:
    """A finished step execution, waiting for the executor thread to deliver it.

    ``job`` is None for a wake-up: a placement finished and cwltool may make progress.
    """

    job: ConnectorJob | None
    outcome: JobOutcome | None = None
    error: str | None = None


class Dispatcher:
    """Owns the event loop, the connectors of a run and the in-flight step executions."""

    def __init__(self, deployment: Deployment, ledger: Ledger) -> None:
        self.deployment = deployment
        self.ledger = ledger
        self.mapper = Mapper(
            deployment.candidates,
            {name: cfg.slots for name, cfg in deployment.locations.items()},
        )
        self.qpus = QpuAccess(deployment)
        self.reuse: ReuseStore | None = None
        """Finished executions of this run directory (set for qflow run, see run_state)."""
        self._qpu_client = LocalConnector("this host", LocationConfig(connector="local"))
        """Runs the client commands of QPU steps that name no ``run_on`` location."""
        self.in_flight = 0
        """Step executions submitted and not yet delivered (executor thread only)."""
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._cancelling = False
        self._connectors: dict[str, Connector] = {}
        self._connector_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = {"classical": 0, "quantum": 0}
        """Executions running now, by kind: phase changes are told to the connectors."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qflow-io", daemon=True)
        self._thread.start()

    # -- called from the cwltool thread -------------------------------------------------
    def submit(self, job: ConnectorJob, spec: JobSpec) -> None:
        """Start a step execution (returns at once)."""
        self.in_flight += 1
        allocation = self.deployment.allocation_for(spec.step)
        if allocation is not None:
            spec = dataclasses.replace(spec, allocation=allocation)
        record = self.ledger.submitted(spec.step, spec.iteration)
        if job.placement is not None and job.placement.requested:
            record.submitted = job.placement.requested  # the wait for a vQPU is queue wait
        self._loop.call_soon_threadsafe(self._spawn, job, spec, record)

    def places_early(self, step: str) -> bool:
        """Steps that may go to a QPU are placed before their job is built."""
        return any(self.qpus.is_quantum(loc) for loc in self.mapper.candidates(step))

    def has_classical_candidate(self, step: str) -> bool:
        """Whether a quantum candidate has somewhere to fall back to."""
        return not all(self.qpus.is_quantum(loc) for loc in self.mapper.candidates(step))

    def request_placement(
        self, step: str, *, fallback_reason: str | None = None
    ) -> concurrent.futures.Future[Placement]:
        """Place ``step`` (a QPU lease if one can be had in time); a fallback skips QPUs.

        Counts as in flight until done, and wakes the executor when done, so that cwltool
        polls the step's job generator again.
        """
        self.in_flight += 1
        candidates = self.mapper.candidates(step)
        reasons = [fallback_reason] if fallback_reason else []
        coro = self.qpus.place(
            step, candidates, skip_quantum=fallback_reason is not None, reasons=reasons
        )
        future = asyncio.run_coroutine_threadsafe(self._tracked(coro, step), self._loop)
        future.add_done_callback(lambda _: self._completions.put(Completion(None)))
        return future

    async def _tracked(self, coro: Any, step: str) -> Placement:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            return await coro
        except NoPlacement as exc:
            record = self.ledger.submitted(step, None)
            self.ledger.ended(record, "failed", message=str(exc))
            raise
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    def next_completion(self, block: bool = True) -> Completion | None:
        """The next finished step execution (None if ``block`` is false and there is none)."""
        while True:
            try:
                completion = self._completions.get(block=block, timeout=1.0 if block else None)
                break
            except queue.Empty:
                if not block:
                    return None
                if not self._thread.is_alive():
                    raise RuntimeError("qflow's I/O thread stopped; see the error above") from None
        self.in_flight -= 1
        return completion

    def release_unused(self, placement: Placement) -> None:
        """Give back a QPU lease whose step needed no execution (its outputs were cached)."""
        asyncio.run_coroutine_threadsafe(self.qpus.release(placement), self._loop)

    def cancel_orphans(self, leftovers: list[dict[str, Any]]) -> None:
        """Cancel what a crashed run left running (from its inflight.jsonl), before starting."""
        future = asyncio.run_coroutine_threadsafe(self._cancel_orphans(leftovers), self._loop)
        future.result(CANCEL_TIMEOUT_S)

    async def _cancel_orphans(self, leftovers: list[dict[str, Any]]) -> None:
        for entry in leftovers:
            location, external_id = entry.get("location"), entry.get("external_id")
            if location not in self.deployment.locations or not external_id:
                continue
            if self.qpus.is_quantum(location):  # the QPU client command ran on run_on or here
                client = self.qpus.config(location).run_on
                connector: Any = await self._connector(client) if client else self._qpu_client
            else:
                connector = await self._connector(location)
            try:
                await connector.cancel_orphan(external_id)
                _logger.warning("cancelled %s left by the interrupted run on %s: %s",
                                entry.get("step"), location, external_id)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - report, go on with the others
                _logger.warning("could not cancel %s on %s: %s", external_id, location, exc)

    def cancel_all(self) -> None:
        """Cancel every in-flight step execution and wait until connectors cleaned up."""
        future = asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop)
        try:
            future.result(CANCEL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            _logger.error("connectors did not finish cancelling within %.0f s", CANCEL_TIMEOUT_S)

    def close(self) -> None:
        """Stop the connectors and the event loop."""
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._stop_connectors(), self._loop)
        try:
            future.result(CANCEL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - closing must go on whatever a connector does
            _logger.warning("stopping connectors: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # -- on the event loop --------------------------------------------------------------
    def _spawn(self, job: ConnectorJob, spec: JobSpec, record: StepRecord) -> None:
        task = self._loop.create_task(self._run(job, spec, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connector(self, location: str) -> Connector:
        """The location's connector, created and started on first use."""
        lock = self._connector_locks.setdefault(location, asyncio.Lock())
        async with lock:
            if location not in self._connectors:
                config = self.deployment.locations[location]
                connector = connector_class(config.connector)(location, config)
                connector.allocation_policy = self.deployment.policy.allocation
                connector.report_allocation = self.ledger.allocation
                await connector.start()
                self._connectors[location] = connector
            return self._connectors[location]

    async def _run(self, job: ConnectorJob, spec: JobSpec, record: StepRecord) -> None:
        outcome: JobOutcome | None = None
        error: str | None = None
        try:
            outcome = await self._run_with_retries(job, spec, record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a connector failure fails the step, not qflow
            error = f"{type(exc).__name__}: {exc}"
            _logger.debug("step execution %s failed", spec.name, exc_info=True)
            if record.ended is None:  # failed before its first attempt (placement, start)
                self.ledger.ended(record, "failed", message=error)
        finally:
            # whatever happened (but a cancel), cwltool must hear about this job
            if not self._cancelling:
                self._completions.put(Completion(job, outcome, error))

    async def _run_with_retries(
        self, job: ConnectorJob, spec: JobSpec, record: StepRecord
    ) -> JobOutcome:
        placement: Placement | None = job.placement
        if placement is not None and placement.quantum:
            return await self._run_on_qpu(job, spec, record, placement)
        candidates = [placement.location] if placement else self.mapper.candidates(spec.step)
        fallback = placement.fallback_reason if placement else None
        location = await self.mapper.acquire(candidates)
        try:
            connector = await self._connector(location)
            attempts = 1 + connector.config.retries
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    record = self.ledger.submitted(spec.step, spec.iteration)
                self.ledger.placed(
                    record,
                    location,
                    connector.config.connector,
                    connector.config.quantum,
                    fallback_reason=fallback,
                )
                outcome = await self._attempt(connector, spec, record)
                ok = self._close(record, job, outcome)
                if ok or attempt == attempts:
                    return outcome
                _logger.warning(
                    "[job %s] failed on %s (attempt %d of %d), retrying",
                    spec.name,
                    location,
                    attempt,
                    attempts,
                )
            raise AssertionError("unreachable")
        finally:
            await self.mapper.release(location)

    async def _run_on_qpu(
        self, job: ConnectorJob, spec: JobSpec, record: StepRecord, placement: Placement
    ) -> JobOutcome:
        """Run the client command with its lease's gateway token; account QPU-seconds."""
        config = self.qpus.config(placement.location)
        env = {
            **spec.env,
            QPU_URL_ENV: placement.gateway_url or "",
            QPU_TOKEN_ENV: placement.step_token or "",
        }
        spec = dataclasses.replace(spec, env=env)
        self.ledger.placed(record, placement.location, config.connector, True)
        client_location = config.run_on
        try:
            if client_location:
                await self.mapper.acquire([client_location])
                connector = await self._connector(client_location)
            else:
                connector = self._qpu_client
            try:
                outcome = await self._attempt(connector, spec, record, quantum=True)
            finally:
                if client_location:
                    await self.mapper.release(client_location)
        finally:
            record.qpu_seconds = await self.qpus.release(placement)
        self._close(record, job, outcome)
        return outcome

    def _close(self, record: StepRecord, job: ConnectorJob, outcome: JobOutcome) -> bool:
        """Record how an execution ended (the resource manager's figures); True on success."""
        ok = job.status_for(outcome.exit_code) == "success"
        self.ledger.ended(
            record,
            "success" if ok else "failed",
            started=outcome.started,
            ended=outcome.ended,
            nodes=outcome.nodes,
            node_seconds=outcome.node_seconds,
            external_id=outcome.external_id,
            message=outcome.message,
        )
        return ok

    async def _attempt(
        self, connector: Connector, spec: JobSpec, record: StepRecord, quantum: bool = False
    ) -> JobOutcome:
        kind = "quantum" if quantum or connector.config.quantum else "classical"
        await self._phase(kind, +1)
        try:
            return await connector.run(spec, lambda ext_id: self.ledger.started(record, ext_id))
        except asyncio.CancelledError:
            self.ledger.ended(record, "cancelled", message="cancelled by qflow")
            raise
        except Exception as exc:
            self.ledger.ended(record, "failed", message=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await self._phase(kind, -1)

    async def _phase(self, kind: str, delta: int) -> None:
        """Count running executions; a quantum phase starts when a quantum execution starts
        while no classical one runs, and ends when the last quantum execution ends."""
        before = dict(self._running)
        self._running[kind] += delta
        starts = kind == "quantum" and delta > 0 and before["quantum"] == 0
        ends = kind == "quantum" and delta < 0 and self._running["quantum"] == 0
        if (starts and self._running["classical"] == 0) or ends:
            for connector in list(self._connectors.values()):
                try:
                    await connector.quantum_phase(starts)
                except Exception as exc:  # noqa: BLE001 - a strategy hiccup must not fail steps
                    _logger.warning("%s: quantum phase hook failed: %s", connector.location, exc)

    async def _cancel_all(self) -> None:
        self._cancelling = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.qpus.close()
        for record in self.ledger.records():
            if record.status in ("queued", "running"):
                self.ledger.ended(record, "cancelled", message="cancelled by qflow")

    async def _stop_connectors(self) -> None:
        await self.qpus.close()
        await asyncio.gather(*(c.stop() for c in self._connectors.values()))
