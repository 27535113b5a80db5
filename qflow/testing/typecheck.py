"""``python -m qflow.testing.typecheck``: mypy on ``qflow/`` and ``connectors/``, as installed.

``connectors/`` is installed as ``qflow.connectors`` (pyproject's ``package-dir``), a mapping
mypy cannot follow from the source tree. So the check runs on a tree of symbolic links laid
out as the installed package, in a temporary directory; the messages name the files of the
source tree. Settings (strictness, third-party modules without types) are in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def link_tree(root: Path) -> Path:
    """``root/qflow``: links to every entry of qflow/, and ``connectors`` to connectors/."""
    package = root / "qflow"
    package.mkdir()
    for entry in (REPO / "qflow").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "connectors").symlink_to(REPO / "connectors")
    return package


def main() -> int:
    from mypy import api

    with tempfile.TemporaryDirectory(prefix="qflow-typecheck-") as tmp:
        link_tree(Path(tmp))
        cwd = Path.cwd()
        os.chdir(tmp)
        try:
            stdout, stderr, status = api.run(
                ["--config-file", str(REPO / "pyproject.toml"), "--cache-dir",
                 str(REPO / ".mypy_cache"), "qflow"]
            )  # fmt: skip
        finally:
            os.chdir(cwd)
    for line in stdout.splitlines():
        if line.startswith("qflow/connectors/"):
            line = line.removeprefix("qflow/")
        print(line)
    print(stderr, end="", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
