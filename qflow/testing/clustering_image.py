"""The clustering workflow's tools in a container image, built here without a registry.

``workflows/clustering-aggregation`` runs ``python3 clagg.py ...`` in every step, and clagg.py
imports numpy, scipy, scikit-learn and dwave-samplers. The image :data:`IMAGE` is the test
image ``python:3-slim`` (:mod:`qflow.testing.container_images`: Debian bookworm's python3,
3.11) with those distributions, and everything they require, copied from this host's Python
into ``/usr/lib/python3/dist-packages`` as one more layer (``podman create``, ``podman cp``
of a tar stream, ``podman commit``).

Why copied from this host rather than ``pip install`` into the image: no network and no
resolver, so it cannot fail on a CI machine that reaches the test images but not PyPI; it
takes seconds (the files are already here: ~250 MB without the packages' tests); and the
image then holds exactly the versions the same workflow runs with outside the container,
which is what a test comparing the two needs. It works because the host's Python is 3.11
like bookworm's (the ``cp311`` ABI) and the distributions come from manylinux wheels, which
carry their own libraries (``numpy.libs``, ``scipy.libs``...) and need only glibc, libgcc
and libstdc++ from the image. Another host Python version is refused
(:class:`ContainersUnavailable`: the tests that need the image skip), not guessed at.

Cached by content like the other images: the image's label :data:`LABEL` holds the digest of
the base image's key and every copied distribution's name, version and RECORD (the wheel's
file hashes); a second session finds it and does nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from importlib.metadata import Distribution, distribution
from pathlib import PurePosixPath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from qflow.testing.container_images import (
    ContainersUnavailable,
    content_key,
    ensure_containers,
    image_label,
    run_checked,
)

IMAGE = "localhost/qflow-clustering:bookworm"
BASE = "docker.io/library/python:3-slim"
ROOTS = ("numpy", "scipy", "scikit-learn", "dwave-samplers")
"""What clagg.py imports (the standard library aside)."""
IMAGE_PYTHON = (3, 11)
"""Debian bookworm's python3."""
SITE = PurePosixPath("usr/lib/python3/dist-packages")
LABEL = "qflow.clustering"
LEFT_OUT = ("..", "tests")
"""Path parts of the files not copied: scripts in bin/ and the packages' own ``tests``
(a fifth of the bytes), which clagg.py never runs."""


def distributions(roots: tuple[str, ...] = ROOTS) -> list[Distribution]:
    """``roots`` and every distribution they require here (markers evaluated for this
    Python, no extras)."""
    found: dict[str, Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found[name] = dist = distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return [found[name] for name in sorted(found)]


def image_key(dists: list[Distribution]) -> str:
    """Digest of what the image is made of: its base and each copied distribution."""
    digest = hashlib.sha256(f"{content_key()} {SITE} {LEFT_OUT}\n".encode())
    for dist in dists:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
        digest.update((dist.read_text("RECORD") or "").encode())
    return digest.hexdigest()[:16]


def ensure_clustering_image(env: Mapping[str, str]) -> str:
    """:data:`IMAGE` in podman's store, built only if not there yet; its name.

    ``env``: the environment podman runs with, once :func:`ensure_containers` made the test
    images (``CONTAINERS_CONF`` set)."""
    if sys.version_info[:2] != IMAGE_PYTHON:
        wanted = ".".join(map(str, IMAGE_PYTHON))
        raise ContainersUnavailable(
            f"the clustering image copies this host's numpy, scipy... into Debian's python3 "
            f"{wanted}; this host's Python is {sys.version_info.major}.{sys.version_info.minor}, "
            f"whose compiled packages would not import there"
        )
    try:
        dists = distributions()
    except Exception as exc:  # noqa: BLE001 - not installed or unreadable metadata: no image
        raise ContainersUnavailable(f"the clustering workflow's packages: {exc}") from exc
    key = image_key(dists)
    if image_label(IMAGE, dict(env), LABEL) != key:
        try:
            _build(dists, key, dict(env))
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            raise ContainersUnavailable(f"{exc} {detail}".strip()) from exc
    return IMAGE


def _build(dists: list[Distribution], key: str, env: dict[str, str]) -> None:
    """:data:`BASE` plus one layer with ``dists`` under :data:`SITE`, committed as IMAGE."""
    replaced = run_checked(["podman", "image", "ls", "--quiet", IMAGE], env).split()
    container = run_checked(["podman", "create", BASE, "python3"], env).strip()
    try:
        copy = subprocess.Popen(["podman", "cp", "-", f"{container}:/"], env=env,
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert copy.stdin is not None and copy.stderr is not None
        try:
            with copy.stdin, tarfile.open(fileobj=copy.stdin, mode="w|") as tar:
                _add_distributions(tar, dists)
        except BrokenPipeError:
            pass  # podman cp ended early: its status and message below say why
        stderr = copy.stderr.read()
        if copy.wait() != 0:
            raise subprocess.CalledProcessError(copy.returncode, copy.args, None, stderr)
        run_checked(["podman", "commit", "--quiet", f"--change=LABEL {LABEL}={key}",
                     container, IMAGE], env)  # fmt: skip
    finally:
        subprocess.run(["podman", "rm", "--force", container], env=env, capture_output=True)
    if replaced:  # the earlier build, now nameless (kept if a container still uses it)
        subprocess.run(["podman", "rmi", *replaced], env=env, capture_output=True)


def _add_distributions(tar: tarfile.TarFile, dists: list[Distribution]) -> None:
    """Every file of ``dists`` (but :data:`LEFT_OUT`) inside site-packages, and its parents."""
    directories: set[PurePosixPath] = set()
    for dist in dists:
        for file in dist.files or []:
            relative = PurePosixPath(file.as_posix())
            if any(part in LEFT_OUT for part in relative.parts):
                continue
            for parent in reversed((SITE / relative).parents[:-1]):
                if parent not in directories:
                    directories.add(parent)
                    info = tarfile.TarInfo(str(parent))
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            tar.add(str(dist.locate_file(file)), arcname=str(SITE / relative), recursive=False)


if __name__ == "__main__":
    podman_env = ensure_containers()
    for name, value in podman_env.items():
        print(f"export {name}={value}")
    print(f"# --default-container {ensure_clustering_image({**os.environ, **podman_env})}")
