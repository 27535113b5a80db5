"""pytest plugin: the session-wide fixtures that start real services on this host, and qflow's
modules byte-compiled once at the start of the session (:func:`qflow.testing.processes.
compile_sources`).

Enable it with ``pytest_plugins = ["qflow.testing.pytest_plugin"]`` in the top-level
conftest.py (tests/conftest.py does). Each service is started on first use and stopped at the
end of the session (also after failures and Ctrl-C); where it cannot run here, the tests that
use it are skipped with the reason.

* ``slurm_cluster`` — a Slurm cluster (:mod:`qflow.testing.slurm_cluster`);
* ``hq_server`` — a HyperQueue server with one 2-core worker (:mod:`qflow.testing.hq_server`);
* ``container_images`` — podman and the images tests and the CWL conformance suite name
  (:mod:`qflow.testing.container_images`), with ``CONTAINERS_CONF`` set for the session;
* ``clustering_image`` — the name of an image with the clustering workflow's tools
  (:mod:`qflow.testing.clustering_image`), built on first use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from qflow.testing.clustering_image import ensure_clustering_image
from qflow.testing.container_images import IMAGES, ContainersUnavailable, ensure_containers
from qflow.testing.hq_server import HqServer, HqUnavailable, start_server, stop_server
from qflow.testing.processes import compile_sources
from qflow.testing.slurm_cluster import (
    ClusterUnavailable,
    SlurmCluster,
    start_cluster,
    stop_cluster,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """qflow's modules are byte-compiled once, not in every qflow process a test starts
    (by the controller when pytest-xdist runs workers)."""
    if not hasattr(session.config, "workerinput"):
        compile_sources()


IDLE_WAIT_S = 60.0
"""How long a test waits for an earlier test's jobs to finish completing (Slurm's KillWait)."""


@pytest.fixture(scope="session")
def slurm_session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The session's Slurm cluster, started once."""
    directory = tmp_path_factory.mktemp("slurm-cluster")
    try:
        cluster = start_cluster(directory)
    except ClusterUnavailable as exc:
        pytest.skip(f"no local Slurm cluster: {exc}")
    try:
        yield cluster
    finally:
        stop_cluster(directory)


@pytest.fixture
def slurm_cluster(slurm_session_cluster: SlurmCluster) -> SlurmCluster:
    """A running Slurm cluster with an empty queue: ``.conf`` (slurm.conf), ``.env`` (with
    SLURM_CONF), ``.dir``. Tests count the jobs left in ``squeue``, so each starts once an
    earlier test's cancelled jobs have finished completing."""
    deadline = time.monotonic() + IDLE_WAIT_S
    while active := slurm_session_cluster.active_jobs():
        if time.monotonic() > deadline:
            pytest.fail(f"an earlier test left Slurm jobs {', '.join(active)} in squeue")
        time.sleep(0.2)
    return slurm_session_cluster


@pytest.fixture(scope="session")
def container_images() -> Iterator[list[str]]:
    """The test images' names, podman's configuration in this process's environment (which
    step commands and the CLIs started by tests inherit); restored at the end."""
    try:
        env = ensure_containers()
    except ContainersUnavailable as exc:
        pytest.skip(f"no podman or test images: {exc}")
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield list(IMAGES)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def clustering_image(container_images: list[str]) -> str:
    """The clustering workflow's tools image, for ``--default-container``."""
    try:
        return ensure_clustering_image(os.environ)
    except ContainersUnavailable as exc:
        pytest.skip(f"no clustering image: {exc}")


_shared: HqServer | None = None
_users = 0


@pytest.fixture(scope="session")
def hq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HqServer]:
    """A running HyperQueue server with one 2-core worker, shared by the whole session.

    Shared even when the fixture is registered twice (this plugin and a test module that
    imports it).
    """
    global _shared, _users
    if _shared is None:
        try:
            _shared = start_server(tmp_path_factory.mktemp("hq-server"), cores=2)
        except HqUnavailable as exc:
            pytest.skip(f"no local HyperQueue server: {exc}")
    _users += 1
    server = _shared
    try:
        yield server
    finally:
        _users -= 1
        if _users == 0:
            _shared = None
            stop_server(server)
