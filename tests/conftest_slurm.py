"""pytest plugin: the session-wide ``slurm_cluster`` fixture (a real Slurm cluster on this host).

Enable it from ``tests/conftest.py`` with ``pytest_plugins = ["conftest_slurm"]``. The cluster
is started on first use and stopped at the end of the session (also after failures and
Ctrl-C); where it cannot run (not root, no packages, daemons that fail) the tests that use it
are skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slurm_cluster import ClusterUnavailable, SlurmCluster, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running Slurm cluster: ``.conf`` (slurm.conf), ``.env`` (with SLURM_CONF), ``.dir``."""
    directory = tmp_path_factory.mktemp("slurm-cluster")
    try:
        cluster = start_cluster(directory)
    except ClusterUnavailable as exc:
        pytest.skip(f"no local Slurm cluster: {exc}")
    try:
        yield cluster
    finally:
        stop_cluster(directory)
