"""Podman and the container images the tests and the CWL conformance suite name, built here.

No container registry is reachable from the test machines, so the images are made from
Debian's packages: one root filesystem (``mmdebstrap --variant=extract``: the packages
unpacked, nothing configured, which is what makes it cheap) holding bash, dash, coreutils,
rev (util-linux), grep, sed, find, python3 (``python`` too), libstdc++ (which compiled Python
packages link to: :mod:`qflow.testing.clustering_image`) and the file :data:`MARKER`,
imported into podman under every name in :data:`IMAGES` (as ``docker.io/library/NAME:TAG``,
which is what cwltool's check for ``docker.io/NAME:TAG`` finds). ``bash:4.4`` gets the
entrypoint of the real image, a script that prepends ``bash`` when the command is an option
(the suite's ``docker_entrypoint``).

Podman itself comes from Debian (``apt-get install podman runc catatonit``, the last for
``--init``) when it is missing, and
runs with the configuration that works on these machines (``runc``, the ``cgroupfs`` cgroup
manager, no default ulimits) from a qflow-owned containers.conf named by ``CONTAINERS_CONF``.

Everything is cached by content: the image carries a label with the digest of what it was
built from, the root filesystem's tarball is kept under ``~/.cache/qflow/images``; a second
session finds both and does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from qflow.testing.debian import apt_install

SUITE = "bookworm"
PACKAGES = (
    "base-files", "bash", "dash", "coreutils", "util-linux", "grep", "sed", "findutils",
    "python3", "libstdc++6",
)  # fmt: skip
"""The root filesystem's packages (with their dependencies)."""

ENTRYPOINT_SCRIPT = """#!/bin/sh
set -e
if [ "${1#-}" != "$1" ] || [ -z "$(command -v "$1")" ]; then set -- bash "$@"; fi
exec "$@"
"""
"""The bash image's entrypoint: ``-c ...`` runs in bash, a command runs as it is."""

IMAGES: dict[str, list[str]] = {
    "docker.io/library/debian:stable-slim": [],
    "docker.io/library/python:3-slim": [],
    "docker.io/library/alpine:latest": [],
    "docker.io/library/bash:4.4": ['ENTRYPOINT ["docker-entrypoint.sh"]'],
}
"""Image name -> podman ``--change`` instructions for it."""

CONTAINERS_CONF = """[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
LABEL = "qflow.rootfs"
MARKER = "/etc/qflow-test-image"
"""A file only the test images have: a command that reads it ran inside one."""
MARKER_TEXT = "qflow test image\n"


class ContainersUnavailable(RuntimeError):
    """Podman or the images cannot be had on this machine (the tests that need them skip)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "qflow" / "images"


def content_key() -> str:
    """Digest of everything an image is built from: a change in any of it rebuilds."""
    material = json.dumps([SUITE, PACKAGES, ENTRYPOINT_SCRIPT, IMAGES, MARKER, MARKER_TEXT])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def ensure_podman() -> dict[str, str]:
    """Podman, runc, catatonit (from Debian if missing) and qflow's containers.conf; the
    variables to set."""
    if not all(shutil.which(command) for command in ("podman", "runc", "catatonit")):
        apt_install("podman", "runc", "catatonit")
    conf = cache_dir().parent / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {"CONTAINERS_CONF": str(conf)}


def ensure_images(env: dict[str, str]) -> list[str]:
    """Every image of :data:`IMAGES` in podman's store, built only if not there yet."""
    key = content_key()
    missing = [name for name in IMAGES if image_label(name, env) != key]
    if missing:
        tarball = _rootfs(key)
        for name in missing:
            changes = [f"--change=LABEL {LABEL}={key}"]
            changes += [f"--change={change}" for change in IMAGES[name]]
            run_checked(["podman", "import", *changes, str(tarball), name], env)
    return list(IMAGES)


def ensure_containers() -> dict[str, str]:
    """Podman and the test images; the environment variables podman needs (set them)."""
    try:
        env = ensure_podman()
        ensure_images({**os.environ, **env})
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        raise ContainersUnavailable(f"{exc} {detail}".strip()) from exc
    return env


def image_label(name: str, env: dict[str, str], label: str = LABEL) -> str | None:
    """The value of an image's ``label`` in podman's store; None: no such image."""
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', name],
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _rootfs(key: str) -> Path:
    """The root filesystem's tarball, from the cache or made now."""
    tarball = cache_dir() / f"rootfs-{key}.tar"
    if tarball.is_file():
        return tarball
    if shutil.which("mmdebstrap") is None:
        apt_install("mmdebstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial")
    excluded = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")]
    run_checked(["mmdebstrap", "--quiet", "--variant=extract", "--mode=root", "--format=tar",
          f"--include={','.join(PACKAGES)}", *excluded, SUITE, str(partial)])  # fmt: skip
    _complete(partial)
    partial.rename(tarball)
    for stale in tarball.parent.glob("rootfs-*.tar"):  # built from what no longer is
        if stale != tarball:
            stale.unlink()
    return tarball


def _complete(tarball: Path) -> None:
    """What the packages' maintainer scripts would have made (extract runs none of them)."""
    with tarfile.open(tarball, "a") as tar:  # the unpacked packages have /tmp already
        _add(tar, "./usr/bin/python", link="python3")
        _add(tar, "./usr/local/bin/docker-entrypoint.sh", data=ENTRYPOINT_SCRIPT, mode=0o755)
        _add(tar, "./etc/passwd", data="root:x:0:0:root:/root:/bin/bash\n")
        _add(tar, "./etc/group", data="root:x:0:\n")
        _add(tar, "." + MARKER, data=MARKER_TEXT)


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    data: str | None = None,
    link: str | None = None,
    mode: int = 0o644,
) -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    content = (data or "").encode()
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content) if data is not None else None)


def run_checked(command: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``command``; its stdout, or CalledProcessError with its stderr."""
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, command, proc.stdout, proc.stderr)
    return proc.stdout


if __name__ == "__main__":
    for name, value in ensure_containers().items():
        print(f"export {name}={value}")
