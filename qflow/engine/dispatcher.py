"""Runs placed step executions on their connectors, on one asyncio event loop in its thread.

The cwltool side (the executor thread) asks for a placement (:mod:`qflow.placement` decides;
a free slot is taken on the spot, anything that must wait or talk to a QPU goes to the loop)
and then submits the job built for it; :meth:`Dispatcher.submit` returns at once. On the loop
each execution is journalled (before its connector can create anything), run by the
connector of its placement (retried per location), recorded in the
:class:`~qflow.reporting.ledger.Ledger`, and its placement released. Finished executions come back
through a queue that the executor thread drains: output collection and cwltool's callbacks
run there, so all of cwltool's state is touched by one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

from qflow.connector import Connector, JobOutcome, JobSpec
from qflow.engine.cleanup import end_leftovers
from qflow.engine.connectors import ConnectorPool
from qflow.placement import NoPlacement, Placement, Placer
from qflow.reporting.ledger import Ledger, StepRecord
from qflow.rundir.journal import NO_JOURNAL, Journal, Resource

if TYPE_CHECKING:
    from qflow.deployment import Deployment
    from qflow.engine.job import ConnectorJob
    from qflow.engine.reuse import ReuseStore
    from qflow.gateway.leases import LeaseSummary
    from qflow.placement.history import History

_logger = logging.getLogger("qflow")

CANCEL_TIMEOUT_S = 60.0
LOOKAHEAD = 16
"""Step executions that may wait for a slot at once (the rest are not built yet)."""
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

    def __init__(
        self,
        deployment: Deployment,
        ledger: Ledger,
        journal: Journal = NO_JOURNAL,
        history: History | None = None,
    ) -> None:
        self.deployment = deployment
        self.ledger = ledger
        self.journal = journal
        self.placer = Placer(deployment, journal, history)
        self.pool = ConnectorPool(deployment, journal, ledger.allocation)
        self.reuse: ReuseStore | None = None
        """Finished executions of this run directory (set for qflow run, see run_state)."""
        self.in_flight = 0
        """Placements and executions not yet delivered (executor thread only)."""
        self._placing: set[concurrent.futures.Future[Placement]] = set()
        """Placements waiting for a slot (see :meth:`may_start`)."""
        self._failures: dict[int, str] = {}
        """Placement number -> why its quantum execution failed (for the fallback)."""
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._cancelling = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = {"classical": 0, "quantum": 0}
        """Executions running now, by kind: phase changes are told to the connectors."""
        self._remover = concurrent.futures.ThreadPoolExecutor(1, "qflow-remove")
        """Deletes finished jobs' scratch directories (see :meth:`remove_later`)."""
        self._loop = asyncio.new_event_loop()
        self.placer.slots.bind(self._loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="qflow-io", daemon=True)
        self._thread.start()

    # -- called from the cwltool thread -------------------------------------------------
    def place(
        self, step: str, iteration: int | None, *, fallback_reason: str | None = None
    ) -> concurrent.futures.Future[Placement]:
        """Where the next execution of ``step`` runs; done at once when a slot is free,
        else when the placer decided (the executor is woken then, to poll cwltool again)."""
        if fallback_reason is None:
            placement = self.placer.place_now(step, iteration)
            if placement is not None:
                done: concurrent.futures.Future[Placement] = concurrent.futures.Future()
                done.set_result(placement)
                return done
        self.in_flight += 1
        coro = self._placed(step, iteration, fallback_reason)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        self._placing.add(future)
        future.add_done_callback(self._placing.discard)
        future.add_done_callback(lambda _: self._completions.put(Completion(None)))
        return future

    def may_start(self) -> bool:
        """Whether cwltool may start another scatter element now: fewer than ``LOOKAHEAD``
        step executions wait for a slot. Jobs are then built about as fast as locations
        take them, not thousands ahead of them."""
        return len(self._placing) < LOOKAHEAD

    def failure_of(self, placement: Placement) -> str:
        """Why the quantum execution of ``placement`` failed, in the QPU's words if known."""
        why = self._failures.pop(placement.number, None)
        where = f"the quantum execution on {placement.location} failed"
        return f"{where}: {why}" if why else where

    def submit(self, job: ConnectorJob, spec: JobSpec) -> None:
        """Start a placed step execution (returns at once)."""
        assert job.placement is not None, "every step execution is placed before its job"
        self.in_flight += 1
        allocation = self.deployment.allocation_for(spec.step)
        if allocation is not None:
            spec = dataclasses.replace(spec, allocation=allocation)
        record = self.ledger.submitted(
            spec.step, spec.iteration, job.placement.requested, spec.container_image
        )
        self._loop.call_soon_threadsafe(self._spawn, self._run(job, spec, record))

    def release_unused(self, placement: Placement) -> None:
        """Give back a placement whose step needed no execution (outputs reused)."""
        self.placer.release_slot(placement)
        if placement.lease is not None:
            asyncio.run_coroutine_threadsafe(self.placer.release(placement), self._loop)

    def remove_later(self, *paths: str) -> None:
        """Delete directories off the executor thread: an ``rmdir`` can take milliseconds
        (2 ms on this machine's disk), which a scatter's dispatch should not wait for."""
        for path in paths:
            self._remover.submit(shutil.rmtree, path, True)

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

    def end_leftovers(self, leftovers: list[Resource]) -> tuple[list[str], list[str]]:
        """End what a crashed run left alive (its journal's open records), before starting."""
        coro = end_leftovers(leftovers, self.deployment, self.pool, self.journal)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def cancel_all(self) -> None:
        """Cancel every in-flight step execution and wait until connectors cleaned up."""
        future = asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop)
        try:
            future.result(CANCEL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            _logger.error("connectors did not finish cancelling within %.0f s", CANCEL_TIMEOUT_S)

    def close(self) -> None:
        """Stop the connectors, the QPU gateway and the event loop; finish deleting."""
        self._remover.shutdown(wait=True)
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(CANCEL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - closing must go on whatever a connector does
            _logger.warning("stopping connectors: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # -- on the event loop --------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _placed(
        self, step: str, iteration: int | None, fallback_reason: str | None
    ) -> Placement:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await self.placer.place(step, iteration, fallback_reason=fallback_reason)
        except NoPlacement as exc:
            record = self.ledger.submitted(step, iteration)
            self.ledger.ended(record, "failed", message=str(exc))
            raise
        finally:
            self._tasks.discard(task)

    async def _run(self, job: ConnectorJob, spec: JobSpec, record: StepRecord) -> None:
        outcome: JobOutcome | None = None
        error: str | None = None
        placement = job.placement
        assert placement is not None
        try:
            if placement.quantum:
                outcome = await self._run_on_qpu(job, spec, record, placement)
            else:
                outcome = await self._run_classical(job, spec, record, placement)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a connector failure fails the step, not qflow
            error = f"{type(exc).__name__}: {exc}"
            _logger.debug("step execution %s failed", spec.name, exc_info=True)
            if record.ended is None:  # failed before its first attempt (start of a connector)
                self.ledger.ended(record, "failed", message=error)
        finally:
            # whatever happened (but a cancel), cwltool must hear about this job
            if not self._cancelling:
                self._completions.put(Completion(job, outcome, error))

    async def _run_classical(
        self, job: ConnectorJob, spec: JobSpec, record: StepRecord, placement: Placement
    ) -> JobOutcome:
        try:
            connector = await self.pool.get(placement.location)
            attempts = 1 + connector.config.retries
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    record = self.ledger.submitted(
                        spec.step, spec.iteration, container_image=spec.container_image
                    )
                self.ledger.placed(record, placement, connector.config.connector,
                                   connector.config.quantum)  # fmt: skip
                queued = time.time()
                outcome = await self._attempt(connector, spec, record)
                if self._record_end(record, job, outcome):
                    self._observe(placement, record, queued)
                    return outcome
                if attempt == attempts:
                    return outcome
                _logger.warning("[job %s] failed on %s (attempt %d of %d), retrying",
                                spec.name, placement.location, attempt, attempts)  # fmt: skip
            raise AssertionError("unreachable")
        finally:
            self.placer.release_slot(placement)

    async def _run_on_qpu(
        self, job: ConnectorJob, spec: JobSpec, record: StepRecord, placement: Placement
    ) -> JobOutcome:
        """Run the client command with its lease's gateway token; account QPU-seconds."""
        assert placement.lease is not None
        config = self.placer.qpus.config(placement.location)
        env = {**spec.env, QPU_URL_ENV: placement.lease.gateway_url,
               QPU_TOKEN_ENV: placement.lease.token}  # fmt: skip
        spec = dataclasses.replace(spec, env=env)
        self.ledger.placed(record, placement, config.connector, True)
        queued = time.time()
        try:
            connector = await self.pool.get(placement.runs_on)
            outcome = await self._attempt(connector, spec, record, quantum=True)
        finally:
            summary = await self._release(placement)
        ok = self._record_end(record, job, outcome, summary)
        if ok:
            self._observe(placement, record, queued, summary.queue_seconds() if summary else 0.0)
        return outcome

    async def _release(self, placement: Placement) -> LeaseSummary | None:
        try:
            return await self.placer.release(placement)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the lease dies with the run
            _logger.warning("releasing the QPU lease of %s: %s", placement.step, exc)
            return None

    def _observe(
        self, placement: Placement, record: StepRecord, queued: float, qpu_queue: float = 0.0
    ) -> None:
        """Teach placement how long this execution took (its queue waits apart)."""
        if record.started is None or record.ended is None:
            return
        run = max(0.0, record.ended - record.started - qpu_queue)
        self.placer.observe(placement, queued_s=max(0.0, record.started - queued), run_s=run)

    def _record_end(
        self,
        record: StepRecord,
        job: ConnectorJob,
        outcome: JobOutcome,
        summary: LeaseSummary | None = None,
    ) -> bool:
        """Record how an execution ended (the resource manager's figures); True on success."""
        ok = job.status_for(outcome.exit_code) == "success"
        message = outcome.message
        if summary is not None and not ok:
            why = summary.failure()
            message = "; ".join(m for m in (why, message) if m) or None
            if why and job.placement is not None:
                self._failures[job.placement.number] = why
        self.ledger.ended(
            record,
            "success" if ok else "failed",
            started=outcome.started,
            ended=outcome.ended,
            nodes=outcome.nodes,
            node_seconds=outcome.node_seconds,
            qpu_seconds=summary.qpu_seconds if summary is not None else None,
            external_id=outcome.external_id,
            message=message,
        )
        return ok

    async def _attempt(
        self, connector: Connector, spec: JobSpec, record: StepRecord, quantum: bool = False
    ) -> JobOutcome:
        """One execution: journalled before the connector can create anything, ended in the
        journal once the connector returned (it has then released what the job held)."""
        durable = connector.outlives_host
        resource = self.journal.intend("execution", connector.location, {"name": spec.name},
                                       step=spec.step, iteration=spec.iteration,
                                       durable=durable)  # fmt: skip
        spec = dataclasses.replace(spec, execution_id=resource.id)

        def started(external_id: str | None) -> None:
            self.ledger.started(record, external_id)
            if external_id:
                self.journal.exists(resource, external_id, durable=durable)

        kind = "quantum" if quantum or connector.config.quantum else "classical"
        await self._phase(kind, +1)
        try:
            outcome = await connector.run(spec, started)
        except asyncio.CancelledError:
            self.journal.ended(resource)
            self.ledger.ended(record, "cancelled", message="cancelled by qflow")
            raise
        except Exception as exc:
            self.journal.ended(resource)
            self.ledger.ended(record, "failed", message=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await self._phase(kind, -1)
        self.journal.ended(resource)
        return outcome

    async def _phase(self, kind: str, delta: int) -> None:
        """Count running executions; a quantum phase starts when a quantum execution starts
        while no classical one runs, and ends when the last quantum execution ends."""
        before = dict(self._running)
        self._running[kind] += delta
        starts = kind == "quantum" and delta > 0 and before["quantum"] == 0
        ends = kind == "quantum" and delta < 0 and self._running["quantum"] == 0
        if (starts and self._running["classical"] == 0) or ends:
            for connector in self.pool.started():
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
        await self.placer.close()
        for record in self.ledger.records():
            if record.status in ("queued", "running"):
                self.ledger.ended(record, "cancelled", message="cancelled by qflow")

    async def _shutdown(self) -> None:
        if self._tasks:  # releases still finishing (a failed quantum execution's lease)
            await asyncio.wait(list(self._tasks), timeout=CANCEL_TIMEOUT_S)
        await self.placer.close()
        await self.pool.stop()
