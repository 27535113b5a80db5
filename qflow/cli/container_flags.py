"""The software-container flags of ``qflow run`` and ``qflow validate``, as cwltool names them.

``--podman`` and ``--singularity`` choose the runtime of every location without a
``container_runtime:`` key (default docker); ``--no-container`` runs every step without one.
``qflow-cwl-runner`` passes cwltool's own flags through unchanged.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cwltool.context import RuntimeContext


def add_container_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--no-container",
        action="store_true",
        help="run steps without their software containers (DockerRequirement)",
    )
    group.add_argument(
        "--podman",
        action="store_true",
        help="containers with podman where the location sets no runtime",
    )
    group.add_argument("--singularity", action="store_true",
                       help="containers with Singularity/Apptainer where the location sets "
                       "no runtime")  # fmt: skip


def container_flags(args: argparse.Namespace) -> list[str]:
    """cwltool's arguments for the flags given."""
    names = ("no_container", "podman", "singularity")
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name, False)]


def runtime_context(args: argparse.Namespace) -> RuntimeContext:
    """A cwltool context with the flags given (for checks made before a run)."""
    from cwltool.context import RuntimeContext  # only where it is needed: start-up time

    return RuntimeContext({"use_container": not args.no_container, "podman": args.podman,
                           "singularity": args.singularity})  # fmt: skip
