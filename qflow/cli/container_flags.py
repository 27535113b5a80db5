"""The software-container flags of ``qflow run`` and ``qflow validate``, as cwltool names them.

``--podman`` and ``--singularity`` choose the runtime of every location without a
``container_runtime:`` key (default docker); ``--no-container`` runs every step without one;
``--default-container IMAGE`` runs the tools that name no image of their own in IMAGE, so a
workflow written without containers (the clustering workflow) runs in one unchanged.
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
    parser.add_argument(
        "--default-container",
        metavar="IMAGE",
        help="run the tools without a DockerRequirement in IMAGE (as cwltool's flag)",
    )


def container_flags_problem(args: argparse.Namespace) -> str | None:
    """Why the container flags given cannot go together; None: they can."""
    image = getattr(args, "default_container", None)
    if image is None:
        return None
    if not image.strip():
        return ("--default-container: the image name is empty. Fix: name an image, "
                "e.g. --default-container docker.io/library/python:3-slim")  # fmt: skip
    if args.no_container:
        return (f"--default-container {image} runs steps in a container, --no-container runs "
                "none. Fix: leave out one of them")  # fmt: skip
    return None


def container_flags(args: argparse.Namespace) -> list[str]:
    """cwltool's arguments for the flags given."""
    names = ("no_container", "podman", "singularity")
    flags = ["--" + name.replace("_", "-") for name in names if getattr(args, name, False)]
    image = getattr(args, "default_container", None)
    return flags + (["--default-container", image] if image else [])


def runtime_context(args: argparse.Namespace) -> RuntimeContext:
    """A cwltool context with the flags given (for checks made before a run)."""
    from cwltool.context import RuntimeContext  # only where it is needed: start-up time

    return RuntimeContext({"use_container": not args.no_container, "podman": args.podman,
                           "singularity": args.singularity,
                           "default_container": args.default_container})  # fmt: skip
