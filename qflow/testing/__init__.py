"""Test support shared by qflow's tests (tests/) and benchmarks (benchmarks/).

Real services started on this host, each stopped by the PID it was started with:

* :mod:`qflow.testing.slurm_cluster` — a Slurm cluster (``deployments/local-slurm/cluster.sh``):
  :func:`~qflow.testing.slurm_cluster.start_cluster`, ``stop_cluster``;
* :mod:`qflow.testing.sshd` — a private sshd on 127.0.0.1, for the Slurm connector's ``login``
  mode;
* :mod:`qflow.testing.hq_server` — a HyperQueue server with one worker, in a helper process;
* :mod:`qflow.testing.qpu_services` — the QPU emulator and the site-wide gateway as processes
  (``serve``, ``emulator``, ``emulator_stats``, ``gateway_user_deployment``);
* :mod:`qflow.testing.gateway_load` — many ``qflow run`` processes sharing one gateway and one
  emulated QPU (benchmarks/gateway_load.py and tests/test_load.py);

and small helpers: :mod:`qflow.testing.processes` (is a PID alive, kill a process tree, stop a
process, a free port), :mod:`qflow.testing.qpu_tasks` (async tests of quantum connectors).

None of these modules imports pytest; the pytest fixtures (``slurm_cluster``, ``hq_server``:
session-wide, skipped with the reason where the service cannot run here) are in the plugin
:mod:`qflow.testing.pytest_plugin`, which tests/conftest.py enables. The services that need
files of the source tree (cluster.sh, tests/data) find them through this checkout, so they run
from a source checkout (``pip install -e``), not from an installed wheel.
"""
