"""The decision at a quantum phase (connectors/slurm_auto_rule.py), without a cluster.

Every branch of the rule as a function of plain values, and how
``SlurmAllocations.decide()`` feeds it (``squeue`` asked only when the answer matters,
contention remembered) with ``squeue`` replaced by a stub. tests/test_strategies.py checks the
same decisions and their effect on a real Slurm cluster.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflow.connectors.slurm import SlurmConnector
from qflow.connectors.slurm_allocation import SlurmAllocations
from qflow.connectors.slurm_auto_rule import decide, needs_pending_check, release_when_idle

FACTOR = 2.0


@pytest.mark.parametrize(
    ("strategy", "quantum_s", "grant_wait_s", "contended", "pending", "decision"),
    [
        # held and malleable never look at what was measured
        ("held", [10.0], [0.01], False, False, "keep"),
        ("held", [10.0], [0.01], True, True, "keep"),
        ("malleable", [0.1], [5.0], False, False, "shrink"),
        ("malleable", [10.0], [0.01], False, False, "shrink"),
        # auto, nothing granted yet: as malleable
        ("auto", [], [], False, False, "shrink"),
        ("auto", [10.0], [], False, False, "shrink"),
        # auto, the first quantum phase: release unless others want nodes
        ("auto", [], [0.01], False, False, "release"),
        ("auto", [], [5.0], False, False, "release"),
        ("auto", [], [0.01], False, True, "shrink"),
        ("auto", [], [0.01], True, False, "shrink"),
        # auto, contention: now (jobs pending) or earlier in the run
        ("auto", [10.0, 6.0], [0.01, 3.0], False, True, "shrink"),
        ("auto", [10.0, 6.0], [0.01, 3.0], True, False, "shrink"),
        ("auto", [0.3], [0.2], False, True, "shrink"),
        # auto, nobody else: release when the mean phase outlasts FACTOR x the mean wait
        ("auto", [10.0, 6.0], [0.01, 3.0], False, False, "release"),  # 8 s > 2 x 1.5 s
        ("auto", [10.0, 6.0], [0.01, 9.0], False, False, "keep"),  # 8 s < 2 x 4.5 s
        ("auto", [0.3], [0.2], False, False, "keep"),  # 0.3 s < 2 x 0.2 s
        ("auto", [4.0], [2.0], False, False, "keep"),  # 4 s = 2 x 2 s: not more
        ("auto", [4.001], [2.0], False, False, "release"),
    ],
)  # fmt: skip
def test_every_branch_of_the_rule(
    strategy: str,
    quantum_s: list[float],
    grant_wait_s: list[float],
    contended: bool,
    pending: bool,
    decision: str,
):
    got = decide(strategy, quantum_s, grant_wait_s, contended=contended,
                 others_pending=pending, keep_factor=FACTOR)  # fmt: skip
    assert got == decision


def test_the_keep_factor_moves_the_line_between_keep_and_release():
    phases, waits = [3.0], [1.0]
    assert decide("auto", phases, waits, contended=False, others_pending=False,
                  keep_factor=2.0) == "release"  # fmt: skip
    assert decide("auto", phases, waits, contended=False, others_pending=False,
                  keep_factor=5.0) == "keep"  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "quantum_s", "grant_wait_s", "contended", "asks"),
    [
        ("held", [10.0], [0.01], False, False),
        ("malleable", [10.0], [0.01], False, False),
        ("auto", [], [], False, False),  # nothing granted: shrinks whatever squeue says
        ("auto", [10.0], [], False, False),
        ("auto", [], [0.01], False, True),  # first phase: release unless others pending
        ("auto", [10.0], [0.01], True, False),  # contention remembered: shrinks anyway
        ("auto", [10.0], [0.01], False, True),
        ("auto", [0.3], [0.2], False, True),
    ],
)
def test_squeue_is_asked_only_when_its_answer_matters(
    strategy: str, quantum_s: list[float], grant_wait_s: list[float], contended: bool, asks: bool
):
    assert needs_pending_check(strategy, quantum_s, grant_wait_s, contended) == asks
    if not asks:  # indeed: the decision is the same either way
        answers = {
            decide(strategy, quantum_s, grant_wait_s, contended=contended, others_pending=p,
                   keep_factor=FACTOR)
            for p in (False, True)
        }  # fmt: skip
        assert len(answers) == 1


durations = st.lists(st.floats(0.0, 1e4, allow_nan=False), max_size=5)


@given(
    st.sampled_from(["held", "malleable", "auto"]),
    durations,
    durations,
    st.booleans(),
    st.booleans(),
    st.floats(0.1, 100),
)
def test_the_rule_as_properties(
    strategy: str,
    phases: list[float],
    waits: list[float],
    contended: bool,
    pending: bool,
    factor: float,
):
    got = decide(strategy, phases, waits, contended=contended, others_pending=pending,
                 keep_factor=factor)  # fmt: skip
    if strategy != "auto":
        assert got == ("keep" if strategy == "held" else "shrink")
    elif not waits or contended or pending:
        assert got == "shrink"
    elif not phases:
        assert got == "release"
    else:
        mean_phase, mean_wait = sum(phases) / len(phases), sum(waits) / len(waits)
        assert got == ("release" if mean_phase > factor * mean_wait else "keep")


# -- the wiring in SlurmAllocations.decide(), squeue replaced ---------------------------------


def _allocations(
    strategy: str, pending: list[bool], keep_factor: float = 2.0
) -> tuple[SlurmAllocations, list[bool]]:
    """SlurmAllocations whose ``squeue`` for pending jobs answers ``pending`` in turn; the
    list of answers it gave (one per call)."""
    config = SlurmConnector.Config(connector="slurm", partition="compute",
                                   auto_keep_factor=keep_factor)  # fmt: skip
    allocations = SlurmAllocations(SlurmConnector("c", config), strategy, None)
    asked: list[bool] = []

    async def others_waiting() -> bool:
        asked.append(pending[len(asked)])
        return asked[-1]

    allocations._others_waiting = others_waiting  # type: ignore[method-assign]
    return allocations, asked


def test_decide_feeds_the_rule_and_remembers_contention():
    allocations, asked = _allocations("auto", [False, True, False])
    assert asyncio.run(allocations.decide()) == "shrink" and asked == []  # nothing granted
    allocations._quantum_phases, allocations._grant_waits = [10.0, 6.0], [0.01, 3.0]
    assert asyncio.run(allocations.decide()) == "release" and asked == [False]
    assert not allocations._contended
    assert asyncio.run(allocations.decide()) == "shrink" and asked == [False, True]
    assert allocations._contended
    # remembered: shrinks from now on, and squeue is not asked again
    assert asyncio.run(allocations.decide()) == "shrink" and asked == [False, True]


@pytest.mark.parametrize(("factor", "decision"), [(2.0, "release"), (5.0, "keep")])
def test_decide_uses_the_locations_keep_factor(factor: float, decision: str):
    allocations, asked = _allocations("auto", [False], keep_factor=factor)
    allocations._quantum_phases, allocations._grant_waits = [3.0], [1.0]
    assert asyncio.run(allocations.decide()) == decision  # 3 s against factor x 1 s
    assert asked == [False]


@pytest.mark.parametrize(("strategy", "decision"), [("held", "keep"), ("malleable", "shrink")])
def test_held_and_malleable_never_ask_squeue(strategy: str, decision: str):
    allocations, asked = _allocations(strategy, [])
    allocations._quantum_phases, allocations._grant_waits = [10.0], [0.01]
    assert asyncio.run(allocations.decide()) == decision and asked == []


@pytest.mark.parametrize(
    ("strategy", "last_decision", "releases"),
    [
        ("auto", None, True),  # before any quantum phase: as per-step
        ("auto", "release", True),
        ("auto", "shrink", True),  # contention: the others can use the node now
        ("auto", "keep", False),  # grants too slow for the phases: nodes are worth keeping
        ("malleable", None, False),
        ("malleable", "shrink", False),
        ("held", "keep", False),
    ],
)
def test_which_strategies_give_back_a_node_nobody_waits_for(
    strategy: str, last_decision: str | None, releases: bool
):
    assert release_when_idle(strategy, last_decision) == releases  # type: ignore[arg-type]
