"""Steps with a ``DockerRequirement``: cwltool builds the container command, a connector runs it.

cwltool's container jobs (``DockerCommandLineJob``, ``PodmanCommandLineJob``,
``SingularityCommandLineJob``) find or pull the image, stage the inputs and build the
runtime's command line (volumes, working directory, environment, user); their ``run`` ends
in ``_execute``, which qflow's :class:`~qflow.engine.job.ConnectorJob` turns into a
:class:`~qflow.connector.JobSpec` for the placed location's connector. So the container
layer is cwltool's own; this module only chooses which of them a location uses
(``container_runtime:``, else the run's ``--podman``/``--singularity``, else docker) and
adapts four things to a command that may run on another host or be cancelled:

* the environment: cwltool hands the runtime command all of this host's environment; the
  connector gets only what the runtime itself reads (:data:`RUNTIME_VARIABLES`), the
  step's variables travel inside the runtime's command line (``--env``,
  ``SINGULARITYENV_*``), as cwltool puts them;
* no ``--cidfile``: it feeds cwltool's memory monitor, which polls the runtime on this host
  while the process runs here, and a rerun (``retries``) would fail on the existing file;
* podman run by root: cwltool asks for ``--userns=keep-id``, which podman refuses outside
  rootless mode ("keep-id is only supported in rootless mode"); root needs no mapping;
* ``--init`` (docker, podman): a cancelled step's connector sends SIGTERM to the runtime's
  client, which passes it on to the container's PID 1, and a command as PID 1 ignores it
  (no default signal actions there); the container would outlive the SIGKILL that follows,
  under the runtime's daemon or ``conmon``. The init (docker-init, podman's catatonit) ends
  the command, the client exits and ``--rm`` removes the container.

Images are looked for (and pulled unless ``--disable-pull``) on this host, once per image
and run (cwltool's cache), before the run starts (:func:`container_problems`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import MutableMapping
from typing import ClassVar

from cwltool.context import RuntimeContext
from cwltool.docker import DockerCommandLineJob, PodmanCommandLineJob
from cwltool.job import CommandLineJob, ContainerCommandLineJob, JobBase
from cwltool.singularity import SingularityCommandLineJob

from qflow.engine.job import CommandConnectorJob, ConnectorJob

RUNTIME_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_RUNTIME_DIR",
                     "DBUS_SESSION_BUS_ADDRESS", "CWL_SINGULARITY_CACHE",
                     "CWL_SINGULARITY_IMAGES")  # fmt: skip
RUNTIME_PREFIXES = ("CONTAINERS_", "DOCKER_", "PODMAN_", "SINGULARITY", "APPTAINER")
"""What of cwltool's environment a container runtime's command is given: what the runtime
reads (its configuration, storage, cache) and the step's own variables in the form the
runtime passes on (``SINGULARITYENV_*``)."""


def runtime_for(configured: str | None, runtime_context: RuntimeContext) -> str:
    """The runtime of a location: its ``container_runtime``, else the run's flags."""
    if configured:
        return configured
    if runtime_context.singularity:
        return "singularity"
    return "podman" if runtime_context.podman else "docker"


def with_runtime(runtime_context: RuntimeContext, runtime: str) -> RuntimeContext:
    """A copy of ``runtime_context`` whose cwltool flags select ``runtime``."""
    context = runtime_context.copy()
    context.podman = runtime == "podman"
    context.singularity = runtime in ("singularity", "apptainer")
    return context


class ContainerConnectorJob(ConnectorJob, ContainerCommandLineJob):
    """A cwltool container job (mixed in after this class) run through a connector."""

    RUNTIME: ClassVar[str]

    def run(
        self, runtimeContext: RuntimeContext, tmpdir_lock: threading.Lock | None = None
    ) -> None:
        requirement, _ = self.get_requirement("DockerRequirement")
        if requirement:  # else cwltool's default container (--default-container)
            image = requirement.get("dockerPull") or requirement.get("dockerImageId")
            self.container_image = str(image) if image else None
        else:
            self.container_image = runtimeContext.default_container
        # the executor passes the run's context: its flags select this job's runtime
        super().run(with_runtime(runtimeContext, self.RUNTIME), tmpdir_lock)

    def create_runtime(
        self, env: MutableMapping[str, str], runtime_context: RuntimeContext
    ) -> tuple[list[str], str | None]:
        runtime, _ = super().create_runtime(env, runtime_context)  # type: ignore[safe-super]
        dropped = {"--userns=keep-id"} if self.RUNTIME == "podman" and os.geteuid() == 0 else set()
        runtime = [a for a in runtime if a not in dropped and not a.startswith("--cidfile=")]
        if runtime[1:2] == ["run"]:  # docker, podman: an init forwards the connector's SIGTERM
            runtime.insert(2, "--init")
        return runtime, None

    def command_environment(self, env: MutableMapping[str, str]) -> dict[str, str]:
        return {
            name: value
            for name, value in env.items()
            if name in RUNTIME_VARIABLES or name.startswith(RUNTIME_PREFIXES)
        }


class DockerConnectorJob(ContainerConnectorJob, DockerCommandLineJob):
    RUNTIME = "docker"


class PodmanConnectorJob(ContainerConnectorJob, PodmanCommandLineJob):
    RUNTIME = "podman"


class SingularityConnectorJob(ContainerConnectorJob, SingularityCommandLineJob):
    RUNTIME = "singularity"


JOB_CLASSES: dict[type[JobBase], type[ConnectorJob]] = {
    CommandLineJob: CommandConnectorJob,
    DockerCommandLineJob: DockerConnectorJob,
    PodmanCommandLineJob: PodmanConnectorJob,
    SingularityCommandLineJob: SingularityConnectorJob,
}
"""cwltool's job class -> qflow's (a class not here, udocker's, qflow does not run)."""
