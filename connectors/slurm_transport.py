"""A Slurm location's transport: its commands on this host, or on its ``login`` node over SSH.

The transports themselves are generic (:mod:`~qflow.connectors.transport`,
:mod:`~qflow.connectors.transport_ssh`); what is Slurm's is set here: ``SLURM_CONF`` for every
command, epoch seconds in the answers of the commands that report times (:data:`QUERY_ENV`),
and where default work directories go. ``submit: salloc`` and the held/malleable/auto
strategies keep an ``srun`` running for each step's whole duration and are refused with
``login`` (config validation).
"""

from __future__ import annotations

import os
from pathlib import Path

from qflow.connectors.slurm_config import SlurmConfig
from qflow.connectors.transport import LocalTransport, Transport, TransportError
from qflow.connectors.transport_ssh import SshLogin, SshTransport

QUERY_ENV = {"SLURM_TIME_FORMAT": "%s"}
"""For ``squeue``/``sacct``/``scontrol`` calls whose times qflow reads: epoch seconds."""


class SlurmError(TransportError):
    """A Slurm command failed (submission refused, controller unreachable, ...)."""


def slurm_transport(config: SlurmConfig, location: str) -> Transport:
    """The transport of a Slurm location: over SSH with ``login``, else on this host."""
    if config.login:
        env = {"SLURM_CONF": config.slurm_conf} if config.slurm_conf else {}
        login = SshLogin(
            config.login, config.ssh_port, config.ssh_key, tuple(config.ssh_options),
            home_dir=".qflow/slurm",
        )  # fmt: skip
        return SshTransport(login, location, env)
    conf = config.slurm_conf or os.environ.get("SLURM_CONF")
    return LocalTransport({"SLURM_CONF": str(Path(conf).expanduser())} if conf else {})


def cluster_identity(config: SlurmConfig) -> str:
    """What tells this location's cluster apart on this host: login node and slurm.conf."""
    conf = config.slurm_conf or ("" if config.login else os.environ.get("SLURM_CONF", ""))
    return f"{config.login or ''}:{config.ssh_port or ''}:{conf}"
