"""Before a run: every step's container runtime installed and its image here (or pulled).

A step with a ``DockerRequirement`` (a requirement or a hint, its own or inherited; else the
run's ``--default-container``) runs in the runtime of each location it may be placed on.
Each distinct (runtime, image) is looked for once, with cwltool's own lookup
(``get_from_requirements``: ``podman inspect``, a pull unless ``--disable-pull``, a build for
``dockerFile``, a ``.sif`` for Singularity); cwltool caches what it found for the rest of
the process, so the steps' jobs find it at once: one pull per image and run, before
anything is allocated. A missing runtime or image is a problem like an unbound step (exit 2,
nothing started).

Locations whose commands run on other hosts (``ClassicalLocationConfig.runs_commands_here``
false: a Slurm ``login``) are not checked here: their nodes pull what they lack when the
command starts (docker, podman), or read the image file from a shared directory
(Singularity, ``CWL_SINGULARITY_CACHE``); docs/containers.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from cwltool.command_line_tool import CommandLineTool
from cwltool.context import RuntimeContext
from cwltool.docker import DockerCommandLineJob, PodmanCommandLineJob
from cwltool.process import Process
from cwltool.singularity import SingularityCommandLineJob
from schema_salad.sourceline import SourceLine

from qflow.connector import ClassicalLocationConfig
from qflow.deployment import Deployment
from qflow.engine.containers import runtime_for
from qflow.engine.tools import steps_of

EXECUTABLES = {"docker": "docker", "podman": "podman", "singularity": "singularity",
               "apptainer": "singularity"}  # fmt: skip
"""The command cwltool runs for each runtime (Apptainer installs ``singularity`` too)."""


def container_problems(
    process: Process, deployment: Deployment, runtime_context: RuntimeContext
) -> list[str]:
    """What stops the steps' containers, one line per (runtime, image) with its fix."""
    if not runtime_context.use_container:
        return []
    problems: list[str] = []
    checked: set[tuple[str, str]] = set()
    for path, tool in steps_of(process):
        found = step_image(tool, runtime_context)
        if found is None:
            continue
        requirement, origin = found
        for location in deployment.candidates(path):
            config = deployment.locations[location]
            if not isinstance(config, ClassicalLocationConfig) or not config.runs_commands_here:
                continue  # a QPU's client command runs on its own location, checked there
            runtime = runtime_for(config.container_runtime, runtime_context)
            image = str(requirement.get("dockerPull") or requirement.get("dockerImageId"))
            if (runtime, image) in checked:
                continue
            checked.add((runtime, image))
            problem = image_problem(runtime, requirement, runtime_context)
            if problem:
                why, fix = problem
                problems.append(
                    f"{origin}: {path} on location {location!r}: {why}. "
                    f"Fix: {fix}, or run with --no-container"
                )
    return problems


def step_image(
    tool: Process, runtime_context: RuntimeContext
) -> tuple[Mapping[str, Any], str] | None:
    """The ``DockerRequirement`` a CommandLineTool runs in (requirement or hint, else the
    run's ``--default-container``) and where it is said, for messages; None: no container."""
    if not isinstance(tool, CommandLineTool):
        return None
    requirement, _ = tool.get_requirement("DockerRequirement")
    if requirement:  # as loaded: SourceLine finds its file and line
        lead = SourceLine(requirement, "dockerPull").makeLead() or str(tool.tool["id"])
        return requirement, f"{lead.removeprefix('file://')} DockerRequirement"
    if runtime_context.default_container:
        image = runtime_context.default_container
        return {"class": "DockerRequirement", "dockerPull": image}, f"--default-container {image}"
    return None


def image_problem(
    runtime: str, requirement: Mapping[str, Any], runtime_context: RuntimeContext
) -> tuple[str, str] | None:
    """Why ``runtime`` cannot run the image of ``requirement`` on this host, and the fix;
    None: it can."""
    executable = EXECUTABLES[runtime]
    if shutil.which(executable) is None:
        return (
            f"container runtime {runtime} is not installed here ({executable} not on PATH)",
            f"install {runtime}, or set the location's container_runtime: to one that is",
        )
    finder: DockerCommandLineJob | SingularityCommandLineJob
    if executable == "singularity":
        finder = SingularityCommandLineJob.__new__(SingularityCommandLineJob)
    else:  # cwltool's lookup reads only which command to run, not a job's other state
        finder = PodmanCommandLineJob.__new__(PodmanCommandLineJob)
        finder.docker_exec = executable
    try:
        finder.get_from_requirements(
            dict(requirement),
            runtime_context.pull_image,
            runtime_context.force_docker_pull,
            runtime_context.tmp_outdir_prefix,
            runtime_context.image_base_path,
        )
    except Exception as exc:  # noqa: BLE001 - cwltool fails in many ways; each is the reason
        image = requirement.get("dockerPull") or requirement.get("dockerImageId")
        if executable == "singularity":
            fix = f"make {image} pullable, or put its .sif into CWL_SINGULARITY_CACHE"
        else:
            fix = f"`{executable} pull {image}` (or `{executable} load`) on this host"
        why = str(exc).strip().rstrip(".") or type(exc).__name__
        return f"image not available to {runtime}: {why}", fix
    return None
