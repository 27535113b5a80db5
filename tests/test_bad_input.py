"""Random and mutated deployment files and arguments (property-based, hypothesis), then the
cases found by hand: always a clear exit 2, never a traceback, never an allocation."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from conftest import DATA, REPO, qflow_cli
from qflow import cli
from qflow.cli.run import looks_like_deployment
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


# --- cases found by hand: the real command, exit 2, FILE[:LINE], a fix, nothing written ----------


def _refused(proc: subprocess.CompletedProcess[str], *says: str, outdir: Path | None = None):
    """The contract for bad input: exit 2, a message naming it with a fix, nothing written."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in (*says, "Fix:"):
        assert text in proc.stderr, proc.stderr
    assert outdir is None or not outdir.exists(), "bad input, yet the run directory was made"


SLEEP = str(DATA / "sleep.cwl")
HERE = "version: 1\nlocations:\n  here: {connector: local}\n"


def test_run_reports_a_deployment_that_is_not_yaml_as_a_deployment(tmp_path: Path):
    broken = tmp_path / "site.yml"  # not named like a deployment: its keys give it away
    broken.write_text(HERE + "bindings: {default: [here}\n")
    out = tmp_path / "out"
    proc = qflow_cli("run", SLEEP, str(broken), "--outdir", str(out))
    _refused(proc, "site.yml:4:", "YAML syntax error", outdir=out)
    assert "job order" not in proc.stderr

    not_utf8 = tmp_path / "site-latin1.yml"
    not_utf8.write_bytes((HERE + "# café\nbindings: {default: here}\n").encode("latin-1"))
    proc = qflow_cli("run", SLEEP, str(not_utf8), "--outdir", str(out))
    _refused(proc, "site-latin1.yml:4:6: byte 0xe9 is not UTF-8", outdir=out)
    proc = qflow_cli("validate", SLEEP, str(not_utf8))
    _refused(proc, f"{not_utf8}:4:6: byte 0xe9 is not UTF-8")


def test_run_still_takes_a_job_order_in_the_deployment_place(tmp_path: Path):
    job = tmp_path / "job.yml"
    job.write_text(f"pidfile: {tmp_path / 'pid'}\nseconds: 0\n")
    proc = qflow_cli("run", "--quiet", SLEEP, str(job), "--outdir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pid").read_text().strip()


@pytest.mark.parametrize(
    ("name", "content", "deployment"),
    [
        ("job.yml", "seconds: 0\n", False),
        ("job.yml", "seconds: [0\n", False),  # broken, but nothing of a deployment in it
        ("job.json", '{"locations": 3, "n": 1}', True),  # deployment keys decide
        ("site.yml", "version: 1\n", True),
        ("site.yml", "locations:\n  here: {connector: local\n", True),
        ("site.yml", b"bindings: {default: here}\n# \xe9\n", True),
        ("deployment.yml", "- here\n", True),  # no job order either: the name decides
        ("job.yml", "- here\n", False),
        ("deploy.yml", None, True),  # missing
        ("job.yml", None, False),
    ],
)  # fmt: skip
def test_looks_like_deployment(
    tmp_path: Path, name: str, content: str | bytes | None, deployment: bool
):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert looks_like_deployment(str(path)) is deployment


def test_a_deployment_that_is_a_directory_is_named_with_the_file_to_give(tmp_path: Path):
    directory = tmp_path / "site"
    directory.mkdir()
    assert looks_like_deployment(str(directory))  # a directory is no job order
    out = tmp_path / "out"
    for command in ("run", "--outdir", str(out)), ("validate",):
        proc = qflow_cli(command[0], SLEEP, str(directory), *command[1:])
        _refused(proc, f"{directory}: is a directory", outdir=out)
    (directory / "deployment.yml").write_text(HERE)
    proc = qflow_cli("run", SLEEP, str(directory), "--outdir", str(out))
    _refused(proc, f"Fix: give the file: {directory / 'deployment.yml'}", outdir=out)


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_service_ports_out_of_range_are_usage_errors(tmp_path: Path, port: str):
    deployment = tmp_path / "site.yml"
    deployment.write_text(HERE)
    env = {**os.environ, "QFLOW_TEST_TOKEN": "a-token-1234"}
    gateway = ["gateway", str(deployment), "--admin-token", "${env:QFLOW_TEST_TOKEN}"]
    for service in (["emulator", "--token", "a-token-1234"], gateway):
        proc = qflow_cli(*service, "--port", port, env=env, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert f"argument --port: invalid port '{port}'" in proc.stderr
        assert "0 to 65535" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["env", "file"])
def test_an_empty_credential_is_refused_at_load(tmp_path: Path, where: str):
    secret_file = tmp_path / "token"
    secret_file.write_text("\n")
    secret_file.chmod(0o600)
    reference = "${env:QFLOW_TEST_EMPTY}" if where == "env" else f"${{file:{secret_file}}}"
    deployment = tmp_path / "site.yml"
    deployment.write_text(
        HERE + f"  qpu:\n    connector: rest\n    url: http://127.0.0.1:9\n    token: {reference}\n"
        "bindings:\n  default: here\n  /sleep: [qpu, here]\n"
    )
    env = {**os.environ, "QFLOW_TEST_EMPTY": ""}
    out = tmp_path / "out"
    proc = qflow_cli("run", SLEEP, str(deployment), "--outdir", str(out), env=env)
    _refused(proc, "site.yml:7: locations.qpu.token:", "is empty", outdir=out)
    _refused(qflow_cli("validate", SLEEP, str(deployment), env=env), "site.yml:7:", "is empty")


def test_a_binding_that_names_no_step_is_an_error(tmp_path: Path):
    deployment = tmp_path / "site.yml"
    deployment.write_text(
        HERE + "  other: {connector: local}\nbindings:\n  default: here\n  /loop/secnd: other\n"
    )
    workflow = str(DATA / "loop-counter.cwl")
    out = tmp_path / "out"
    says = (
        "site.yml:7: bindings./loop/secnd: the workflow has no step /loop/secnd",
        "Fix: did you mean '/loop/second'?",
    )
    _refused(qflow_cli("run", workflow, str(deployment), "--outdir", str(out)), *says, outdir=out)
    _refused(qflow_cli("validate", workflow, str(deployment)), *says)
