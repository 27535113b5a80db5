"""The problems of one deployment file, collected so all are reported in one pass."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

from ruamel.yaml.comments import CommentedMap

from qflow.deployment.model import DeploymentError
from qflow.deployment.suggestions import guess
from qflow.deployment.yaml_nodes import join_path, key_line, node_line


class ProblemCollector:
    """(line, message) problems of ``source``, raised together, in file order, by :meth:`fail`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[int, str]] = []

    def add(self, line: int, path: str, what: str, fix: str) -> None:
        where = f"{self.source}:{line}: {path}: " if path else f"{self.source}:{line}: "
        self.problems.append((line, f"{where}{what}. Fix: {fix}"))

    def fail(self) -> typing.NoReturn:
        self.problems.sort(key=lambda p: p[0])
        raise DeploymentError([message for _, message in self.problems])

    def unknown_key(
        self, node: CommentedMap, key: Any, prefix: str, allowed: Sequence[str]
    ) -> None:
        self.add(
            key_line(node, key, node_line(node)),
            join_path(prefix, str(key)),
            "unknown key",
            guess(str(key), allowed, f"remove it; allowed keys: {', '.join(allowed)}"),
        )
