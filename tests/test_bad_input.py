"""Random and mutated deployment files and arguments: always a clear exit 2, never a traceback,
never an allocation (property-based, hypothesis)."""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from conftest import DATA, REPO
from qflow import cli
from qflow.deployment import DeploymentError, parse_deployment

LOCAL = YAML(typ="safe").load((REPO / "deployments" / "local.yml").read_text())

WORDS = ["local", "qpu", "emulator", "/loop", "default", "${env:NOPE}"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(WORDS),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    return found


@st.composite
def mutated_deployments(draw: st.DrawFn) -> Any:
    """The embedded default with a few keys deleted, replaced by random values, or added."""
    data = copy.deepcopy(LOCAL)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if not path or not isinstance(parent, dict) or path[-1] not in parent:
            continue
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(values)
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(min_size=1, max_size=8))] = draw(values)
    return data


def _dump(data: Any) -> str:
    import io

    out = io.StringIO()
    YAML().dump(data, out)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(mutated_deployments())
def test_mutated_deployments_are_accepted_or_explained(data: Any):
    try:
        parse_deployment(_dump(data), "mutant.yml")
    except DeploymentError as exc:
        assert exc.messages and all(m.startswith("mutant.yml") for m in exc.messages)
        assert all("Fix:" in m or "syntax" in m.lower() for m in exc.messages), exc.messages


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_accepted_or_explained(text: str):
    try:
        parse_deployment(text, "noise.yml")
    except DeploymentError as exc:
        assert all(m.startswith("noise.yml") for m in exc.messages)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutated_deployments())
def test_qflow_run_with_a_bad_deployment_allocates_nothing(tmp_path: Path, capsys, data: Any):
    deployment = tmp_path / "d.yml"
    deployment.write_text(_dump(data))
    try:
        parse_deployment(deployment.read_text(), str(deployment))
    except DeploymentError:
        pass
    else:
        return  # a mutant that is still valid: not this test's concern
    marker = tmp_path / "ran"
    marker.unlink(missing_ok=True)
    code = cli.main(
        ["run", "--quiet", "--outdir", str(tmp_path / "out"), str(DATA / "sleep.cwl"),
         str(deployment), "--", "--pidfile", str(marker), "--seconds", "0"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "qflow: error:" in err and "Traceback" not in err
    assert not marker.exists(), "a step ran although the deployment was refused"
    assert not (tmp_path / "out" / "qflow-report.json").exists()


ARGS = ["run", "validate", "report", "connectors", "--outdir", "--report", "--quiet", "--plot",
        "x.cwl", str(DATA / "fail.cwl"), "nope.yml", "-", "--", "--bogus", ""]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ARGS), max_size=5))
def test_random_arguments_never_crash(argv: list[str]):
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            assert exc.code in (0, 2)
            return
    assert code in (0, 1, 2)
