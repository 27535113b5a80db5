"""What a run gives its execution connectors at construction: the ConnectorContext."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from conftest import DATA, deployment_from
from qflow.connector import (
    STANDALONE,
    ConnectorContext,
    JobOutcome,
    JobSpec,
    JobStartedCallback,
    LocationConfig,
)
from qflow.connectors.local import LocalConnector
from qflow.engine.connectors import takes_context
from qflow.engine.runner import RunDirectory, run_cwl
from qflow.rundir.journal import NO_JOURNAL
from qflow.rundir.state import Invocation, RunState


class SeeingConnector(LocalConnector):
    """The local connector, keeping the context each of its runs saw."""

    seen: ClassVar[list[ConnectorContext]] = []

    async def run(self, job: JobSpec, on_started: JobStartedCallback) -> JobOutcome:
        SeeingConnector.seen.append(self.context)
        return await super().run(job, on_started)


class OlderConnector(SeeingConnector):
    """Written to the contract before the context: its ``__init__`` takes two arguments."""

    def __init__(self, location: str, config: LocationConfig) -> None:
        super().__init__(location, config)
        self.made_here = True


def _run(tmp_path: Path, connector: str) -> ConnectorContext:
    """Run a one-step workflow in a run directory, as ``qflow run`` does; the step's context."""
    SeeingConnector.seen = []
    deployment = deployment_from(
        f"""
        version: 1
        locations:
          here: {{connector: {connector}}}
        policy: {{allocation: held}}
        bindings:
          default: here
        """
    )
    workflow = str(DATA / "resources.cwl")
    state = RunState(tmp_path)
    invocation = Invocation(workflow, None, None, [], str(tmp_path / "qflow-report.json"))
    argv = ["--quiet", "--outdir", str(tmp_path), workflow]
    result = run_cwl(argv, deployment, rundir=RunDirectory(state, invocation))
    assert result.exit_code == 0
    (context,) = SeeingConnector.seen
    return context


def test_a_run_creates_its_connectors_with_its_journal_and_policy(
    tmp_path: Path, register_connector: Any
):
    register_connector("seeing", SeeingConnector)
    context = _run(tmp_path, "seeing")
    assert context.journal is not NO_JOURNAL  # the run directory's journal
    assert context.allocation_policy == "held"  # the deployment's, not the default
    assert context.report_allocation is not None  # the ledger's


def test_a_connector_whose_init_predates_the_context_gets_it_all_the_same(
    tmp_path: Path, register_connector: Any
):
    register_connector("older", OlderConnector)
    assert not takes_context(OlderConnector) and takes_context(SeeingConnector)
    context = _run(tmp_path, "older")
    assert context.journal is not NO_JOURNAL and context.report_allocation is not None


def test_a_connector_on_its_own_has_the_standalone_context():
    connector = LocalConnector("here", LocationConfig(connector="local"))
    assert connector.context is STANDALONE and connector.journal is NO_JOURNAL
    assert STANDALONE.allocation_policy == "per-step" and STANDALONE.report_allocation is None
    assert OlderConnector("here", LocationConfig(connector="local")).made_here
