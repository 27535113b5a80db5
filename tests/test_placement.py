"""Placement (the mapping M): spill-over, QPUs waited for together, earliest finish.

The placer is exercised directly (with the real embedded gateway and in-process QPU
emulators), then end to end with two emulator processes of different speeds.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, deployment_from, run_in_process
from qflow.placement import Placer
from qflow.placement.history import History
from qflow.testing.qpu_services import emulator_stats, serve

QUBO = DATA / "mis5.qubo.json"
TOKEN = "placement-vendor-9d1e"


def _run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def _placer(text: str, history: History | None = None) -> Placer:
    placer = Placer(deployment_from(text), history=history)
    placer.slots.bind(asyncio.get_running_loop())
    return placer


TWO_CLASSICAL = """
version: 1
locations:
  a: {connector: local, slots: 1}
  b: {connector: local, slots: 1}
bindings:
  default: a
  /step: [a, b]
  /fast: {locations: [a, b], placement: earliest-finish}
"""


def test_a_full_first_candidate_spills_over_to_the_next_and_waits_for_whichever_frees():
    async def scenario() -> None:
        placer = _placer(TWO_CLASSICAL)
        first = placer.place_now("/step", None)
        second = placer.place_now("/step", None)
        assert first is not None and second is not None
        assert (first.location, second.location) == ("a", "b")
        assert placer.place_now("/step", None) is None  # both full: must wait
        third = asyncio.ensure_future(placer.place("/step", None))
        await asyncio.sleep(0.2)
        assert not third.done()
        placer.release_slot(second)  # b frees first: the waiting step takes b, not a
        placement = await asyncio.wait_for(third, 10)
        assert placement.location == "b"
        await placer.close()

    _run(scenario)


def test_earliest_finish_takes_the_candidate_measured_fastest_and_records_estimates():
    history = History(None, "wf")
    history.add_run("/fast", "a", 10.0)
    history.add_run("/fast", "b", 1.0)
    history.add_run("/step", "a", 10.0)
    history.add_run("/step", "b", 1.0)

    async def scenario() -> None:
        placer = _placer(TWO_CLASSICAL, history)
        fast = placer.place_now("/fast", None)
        assert fast is not None and fast.location == "b"
        assert fast.estimates == pytest.approx({"a": 10.0, "b": 1.0}, abs=0.1)
        assert "earliest finish: b" in fast.reason
        placer.release_slot(fast)
        first = placer.place_now("/step", None)  # the `first` rule keeps binding order
        assert first is not None and first.location == "a" and first.estimates is None
        await placer.close()

    _run(scenario)


def test_earliest_finish_waits_for_a_busy_fast_candidate_rather_than_take_a_free_slow_one():
    history = History(None, "wf")
    history.add_run("/fast", "a", 2.0)
    history.add_run("/fast", "b", 30.0)

    async def scenario() -> None:
        placer = _placer(TWO_CLASSICAL, history)
        busy = placer.place_now("/fast", None)  # takes a (2 s expected)
        assert busy is not None and busy.location == "a"
        assert placer.place_now("/fast", None) is None  # a busy: expected in 2 + 2 s < 30 s
        waiting = asyncio.ensure_future(placer.place("/fast", None))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        placer.release_slot(busy)
        placement = await asyncio.wait_for(waiting, 10)
        assert placement.location == "a"
        assert placement.estimates is not None
        assert placement.estimates["a"] < placement.estimates["b"]
        await placer.close()

    _run(scenario)


def test_first_waits_for_all_quantum_candidates_at_once_not_one_after_the_other():
    text = """
    version: 1
    locations:
      q1: {connector: emulator, max_wait: 600}
      q2: {connector: emulator, max_wait: 600}
      local: {connector: local}
    bindings:
      default: local
      /solve: [q1, q2, local]
    """

    async def scenario() -> None:
        placer = _placer(text)
        held1 = await placer.qpus.lease("q1", "/other", 0)
        held2 = await placer.qpus.lease("q2", "/other", 0)
        waiting = asyncio.ensure_future(placer.place("/solve", None))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await placer.qpus.release(held2)
        # one after the other, it would still wait for q1 (600 s)
        placement = await asyncio.wait_for(waiting, 30)
        assert placement.location == "q2" and placement.quantum and not placement.fallback_reason
        await placer.release(placement)
        await placer.qpus.release(held1)
        stats = placer.qpus._embedded.gateway.slots  # type: ignore[union-attr]
        assert stats["q1"].free == 1 and stats["q2"].free == 1  # nothing left held
        await placer.close()

    _run(scenario)


def test_a_fallback_spills_over_to_a_free_classical_candidate(tmp_path: Path, monkeypatch):
    """Two solves whose QPU cannot be reached fall back; the first classical candidate has
    one slot, so the second solve takes the next candidate instead of waiting for it."""
    monkeypatch.setenv("QPU_TOKEN", TOKEN)
    deployment = deployment_from(
        """
        version: 1
        locations:
          busy: {connector: local, slots: 1}
          spare: {connector: local, slots: 1}
          qpu: {connector: rest, url: "http://127.0.0.1:9", token: "${env:QPU_TOKEN}",
                http_retries: 0, max_wait: 5}
        bindings:
          default: busy
          /solve: [qpu, busy, spare]
        """
    )
    result, _ = run_in_process(DATA / "qubo-scatter.cwl", deployment, tmp_path, "--qubo", str(QUBO))
    assert result.exit_code == 0
    solves = [r for r in result.report["steps"] if r["step"] == "/solve"]
    assert len(solves) >= 2
    assert all(r["fallback"] and "unreachable" in r["fallback_reason"] for r in solves)
    assert {r["location"] for r in solves} == {"busy", "spare"}
    busy = [r for r in solves if r["location"] == "busy"]
    spare = [r for r in solves if r["location"] == "spare"]
    # the spare ran while busy's single slot was taken: their runs overlap
    assert any(s["started"] < b["ended"] and b["started"] < s["ended"] for s in spare for b in busy)


# --- two QPU processes of different speeds -------------------------------------------------


def _submit_blocker(url: str) -> str:
    """A task that keeps the QPU busy (the emulator runs one at a time)."""
    qubo = json.loads(QUBO.read_text())
    body = {"kind": "qubo", "qubo": qubo["terms"], "num_variables": qubo["num_variables"]}
    request = urllib.request.Request(
        f"{url}/v1/tasks",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["id"]


def _task(url: str, task_id: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _qpu_process(backend: str, time_scale: float) -> Any:
    args = ["qflow.emulator", "--port", "0", "--backend", backend, "--time-scale", str(time_scale)]
    return serve(args, {"QFLOW_EMULATOR_TOKEN": TOKEN}, "qflow emulator listening on")


def _two_qpus(slow: str, fast: str, extra: str = "") -> str:
    return f"""
    version: 1
    locations:
      local: {{connector: local, slots: 2}}
      slow: {{connector: rest, url: "{slow}", token: "${{env:QPU_TOKEN}}", max_wait: 300}}
      fast: {{connector: rest, url: "{fast}", token: "${{env:QPU_TOKEN}}", max_wait: 300}}
    bindings:
      default: local
      /solve:
        locations: [slow, fast, local]
        placement: earliest-finish
        {extra}
    """


def test_a_busy_slow_qpu_loses_to_an_idle_fast_one(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("QPU_TOKEN", TOKEN)
    with _qpu_process("neutral-atom", 0.2) as slow, _qpu_process("superconducting", 1) as fast:
        blocker = _submit_blocker(slow)  # 24 s on the slow QPU
        result, _ = run_in_process(
            DATA / "qubo-solve.cwl", deployment_from(_two_qpus(slow, fast)), tmp_path,
            "--qubo", str(QUBO),
        )  # fmt: skip
        blocker_state = _task(slow, blocker)
        fast_tasks = emulator_stats(fast, TOKEN)["tasks"]
    assert result.exit_code == 0
    (record,) = result.report["steps"]
    assert record["location"] == "fast" and record["quantum"] and not record["fallback"]
    assert set(record["estimate"]) == {"slow", "fast", "local"}
    assert record["estimate"]["fast"] < record["estimate"]["slow"]
    assert record["estimate"]["fast"] < record["estimate"]["local"]
    assert "earliest finish: fast" in record["placement_reason"]
    # it did not wait for the slow QPU: its blocker was still running when the step ended
    assert blocker_state["state"] == "running"
    assert [t["state"] for t in fast_tasks] == ["completed"]


def test_qpus_queued_beyond_the_classical_estimate_run_it_classically_at_once(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("QPU_TOKEN", TOKEN)
    hint = "expected_seconds: {local: 2}"
    with _qpu_process("neutral-atom", 0.2) as one, _qpu_process("neutral-atom", 0.2) as two:
        blockers = [(one, _submit_blocker(one)), (two, _submit_blocker(two))]
        result, _ = run_in_process(
            DATA / "qubo-solve.cwl", deployment_from(_two_qpus(one, two, hint)), tmp_path,
            "--qubo", str(QUBO),
        )  # fmt: skip
        states = [_task(url, task)["state"] for url, task in blockers]
        ran = [emulator_stats(url, TOKEN)["tasks"] for url in (one, two)]
    assert result.exit_code == 0
    (record,) = result.report["steps"]
    assert record["location"] == "local" and not record["quantum"] and record["fallback"]
    assert "expected to finish first here" in record["fallback_reason"]
    assert record["estimate"]["local"] < min(record["estimate"]["slow"], record["estimate"]["fast"])
    assert states == ["running", "running"]  # it never queued behind them
    assert ran == [[], []]  # and no task of it reached either QPU
