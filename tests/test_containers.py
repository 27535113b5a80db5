"""Steps with a DockerRequirement run in their container (podman) on every kind of location.

The images are built by the ``container_images`` fixture (qflow.testing.container_images);
their file MARKER exists nowhere else, so a step that prints it ran inside the image. The
clustering workflow's tools image comes from the ``clustering_image`` fixture
(qflow.testing.clustering_image).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cwltool.context import RuntimeContext
from rocrate.rocrate import ROCrate

from conftest import DATA, REPO, deployment_from, qflow_cli, qflow_interruptible, run_in_process
from qflow.cli.validate import validate_workflow
from qflow.engine.runner import run_cwl
from qflow.testing.container_images import MARKER, MARKER_TEXT

IN_IMAGE = DATA / "in-image.cwl"
CLUSTERING = REPO / "workflows" / "clustering-aggregation" / "main.cwl"
IMAGE = "docker.io/debian:stable-slim"
LOCAL_PODMAN = """
version: 1
locations:
  here: {connector: local, container_runtime: podman}
bindings:
  default: here
"""

pytestmark = [
    pytest.mark.usefixtures("container_images"),
    pytest.mark.xdist_group("containers"),  # one worker builds and uses the images
]


def _run_in_image(tmp_path: Path, location: str) -> dict[str, Any]:
    deployment = deployment_from(
        f"version: 1\nlocations:\n  here: {location}\nbindings:\n  default: here\n"
    )
    result, outputs = run_in_process(IN_IMAGE, deployment, tmp_path / "out")
    assert result.exit_code == 0 and outputs is not None
    assert Path(outputs["marker"]["path"]).read_text() == MARKER_TEXT
    assert result.report is not None
    (step,) = result.report["steps"]
    assert step["status"] == "success" and step["container_image"] == IMAGE
    return step


def test_a_step_runs_in_its_image_on_this_host(tmp_path: Path):
    assert not os.path.exists(MARKER)  # else reading it would prove nothing
    step = _run_in_image(tmp_path, "{connector: local, container_runtime: podman}")
    assert step["connector"] == "local"


@pytest.mark.slurm
def test_a_step_runs_in_its_image_in_a_slurm_job(tmp_path: Path, slurm_cluster: Any):
    step = _run_in_image(
        tmp_path,
        f"{{connector: slurm, partition: compute, slurm_conf: {slurm_cluster.conf}, "
        "container_runtime: podman}",
    )
    assert step["external_id"].isdigit()  # a Slurm job ran it
    assert not slurm_cluster.active_jobs()


def test_a_step_runs_in_its_image_in_a_hyperqueue_task(tmp_path: Path, hq_server: Any):
    step = _run_in_image(
        tmp_path,
        f"{{connector: hyperqueue, server_dir: {hq_server.server_dir}, container_runtime: podman}}",
    )
    assert step["connector"] == "hyperqueue" and step["external_id"]


def test_a_cancelled_step_leaves_no_container(tmp_path: Path):
    seconds = str(200 + os.getpid() % 100)  # names this test's container among others'

    def containers() -> list[str]:
        listed = subprocess.run(["podman", "ps", "-a", "--format", "{{.Command}}"],
                                capture_output=True, text=True, check=True)  # fmt: skip
        return [c for c in listed.stdout.splitlines() if c.strip() == f"sleep {seconds}"]

    proc = qflow_interruptible(
        "run", "--podman", str(DATA / "sleep-in-image.cwl"), "--quiet",
        "--outdir", str(tmp_path), "--", "--seconds", seconds, cwd=tmp_path,
    )  # fmt: skip
    _wait_for(lambda: bool(containers()), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    _wait_for(lambda: not containers())  # --rm takes a moment after the container ends


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert proc is None or proc.poll() is None, "qflow ended before the awaited moment"
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(0.2)


def test_without_containers_the_step_runs_on_the_host(tmp_path: Path):
    argv = ["--quiet", "--no-container", "--outdir", str(tmp_path), str(IN_IMAGE)]
    result = run_cwl(argv, deployment_from(LOCAL_PODMAN), stdout=io.StringIO())
    assert result.exit_code == 1 and result.report is not None  # no marker on the host
    assert result.report["steps"][0]["container_image"] is None


def test_the_provenance_crate_names_the_steps_image(tmp_path: Path):
    crate_dir = tmp_path / "crate"
    argv = ["--quiet", "--outdir", str(tmp_path / "out"), str(IN_IMAGE)]
    result = run_cwl(argv, deployment_from(LOCAL_PODMAN), stdout=io.StringIO(),
                     provenance=str(crate_dir))  # fmt: skip
    assert result.exit_code == 0
    crate = ROCrate(crate_dir)
    (action,) = [e for e in crate.get_entities() if e.type == "CreateAction" and e.get("stepPath")]
    image = action["containerImage"]
    assert image.type == "ContainerImage" and image["name"] == IMAGE


def test_a_missing_image_is_bad_input_before_the_run(tmp_path: Path):
    deployment = tmp_path / "d.yml"
    deployment.write_text(LOCAL_PODMAN)
    workflow = DATA / "missing-image.cwl"
    problems = validate_workflow(str(workflow), deployment_from(LOCAL_PODMAN))
    (problem,) = problems
    assert "missing-image.cwl:7:" in problem and "qflow-no-such-image" in problem
    assert "location 'here'" in problem and "Fix:" in problem
    out = tmp_path / "out"
    proc = qflow_cli(
        "run", str(workflow), str(deployment), "--quiet", "--outdir", str(out), cwd=tmp_path
    )  # fmt: skip
    assert proc.returncode == 2 and "qflow-no-such-image" in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing started, nothing written


def test_a_missing_runtime_is_bad_input_naming_the_location(monkeypatch):
    monkeypatch.setenv("PATH", "")
    deployment = deployment_from(LOCAL_PODMAN.replace("here", "ws").replace("podman", "docker"))
    (problem,) = validate_workflow(str(IN_IMAGE), deployment)
    assert "location 'ws'" in problem and "docker is not installed" in problem


@pytest.mark.slurm
def test_the_clustering_workflow_in_its_image_on_slurm_gives_the_same_result(
    tmp_path: Path, slurm_cluster: Any, clustering_image: str
):
    """Every step of the unchanged workflow in the image (annealing too: no QPU is bound, so
    its classical implementation runs, simulated annealing, which needs no network)."""
    deployment = tmp_path / "slurm.yml"
    deployment.write_text(
        "version: 1\nlocations:\n  compute: {connector: slurm, partition: compute, slots: 6}\n"
        "bindings:\n  default: compute\n"
    )
    env = {**os.environ, "SLURM_CONF": str(slurm_cluster.conf)}  # with podman's CONTAINERS_CONF

    def run(name: str, *flags: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        out = tmp_path / name
        proc = qflow_cli(
            "run", *flags, str(CLUSTERING), str(deployment), "--quiet", "--outdir", str(out),
            "--", "--n_samples", "300", "--max_iterations", "1", "--silhouette_sample", "0",
            "--num_reads", "10", "--num_sweeps", "200", env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout), json.loads((out / "qflow-report.json").read_text())["steps"]

    with ThreadPoolExecutor(2) as pool:  # side by side: the test takes the longer run's time
        in_image = pool.submit(run, "in-image", "--podman", "--default-container", clustering_image)
        (plain, plain_steps), (contained, steps) = run("on-host"), in_image.result()
    assert contained["iterations"] == plain["iterations"] == 1
    assert contained["score"] == plain["score"]
    labels = np.load(contained["labels"]["path"])
    assert np.array_equal(labels, np.load(plain["labels"]["path"])) and labels.max() > 0
    assert {s["step"] for s in steps} == {s["step"] for s in plain_steps}
    assert "/loop/annealing" in {s["step"] for s in steps}
    for step in steps:  # each a Slurm job running its command in the image
        assert step["container_image"] == clustering_image and step["external_id"].isdigit()
    assert {s["container_image"] for s in plain_steps} == {None}
    assert not slurm_cluster.active_jobs()


def test_a_default_container_is_checked_before_the_run(tmp_path: Path):
    problems = validate_workflow(
        str(CLUSTERING), deployment_from(LOCAL_PODMAN),
        RuntimeContext({"podman": True, "default_container": "qflow-no-such-image:0"}),
    )  # fmt: skip
    (problem,) = problems  # one image, looked for once for all the steps
    assert problem.startswith("--default-container qflow-no-such-image:0: /")
    assert "location 'here'" in problem and "Fix: `podman pull" in problem
    proc = qflow_cli("run", "--no-container", "--default-container", "x", str(CLUSTERING),
                     "--outdir", str(tmp_path / "out"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "--no-container runs none" in proc.stderr
    assert not (tmp_path / "out").exists()
