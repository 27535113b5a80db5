"""Workflow input and output values as crate entities: files copied in with checksums,
everything else as a ``PropertyValue``.

A file value is copied under ``inputs/NAME/`` or ``outputs/NAME/`` (NAME: the parameter) and
carries ``sha256`` (computed here, over the bytes copied) and ``sha1`` (cwltool's own
checksum of the output, when it computed one; else computed here too), so a reader can check
the crate's copy and compare with what cwltool reported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rocrate.model.contextentity import ContextEntity
from rocrate.model.entity import Entity
from rocrate.rocrate import ROCrate

from qflow.provenance.workflow import local_path


def digests(path: Path) -> dict[str, str]:
    """``{"sha1": hex, "sha256": hex}`` of a file's bytes."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
    return {"sha1": sha1.hexdigest(), "sha256": sha256.hexdigest()}


class ValueWriter:
    """Adds the values of one side (``inputs`` or ``outputs``) of the run to the crate."""

    def __init__(self, crate: ROCrate, side: str) -> None:
        self.crate = crate
        self.side = side
        self._taken: set[str] = set()

    def add(self, values: Any, parameters: dict[str, Entity]) -> list[Entity]:
        """One entity per value (a list of files gives one per file), linked to its
        FormalParameter by ``exampleOfWork`` (and back by ``workExample``)."""
        entities: list[Entity] = []
        for name, value in (values or {}).items():
            if name not in parameters:  # not a parameter of the workflow (cwltool's extras)
                continue
            for entity in self._entities(name, value):
                entity["exampleOfWork"] = parameters[name]
                parameters[name].append_to("workExample", entity)
                entities.append(entity)
        return entities

    def _entities(self, name: str, value: Any) -> list[Entity]:
        if isinstance(value, list) and value and all(_is_file(v) for v in value):
            return [e for v in value for e in self._entities(name, v)]
        if _is_file(value):
            path = local_path(str(value.get("location", "")))
            if path is not None and path.is_file():
                return [self._file(name, path, value)]
            if path is not None and path.is_dir():
                return [self._directory(name, path)]
            return []  # gone (a failed step's partial output), or not a local file
        if value is None:
            return []
        text = value if isinstance(value, str) else json.dumps(value)
        identifier = f"#{self.side}/{name}"
        return [self.crate.add(ContextEntity(self.crate, identifier, properties={
            "@type": "PropertyValue", "name": name, "value": text,
        }))]  # fmt: skip

    def _dest(self, name: str, basename: str) -> str:
        dest, n = f"{self.side}/{name}/{basename}", 1
        while dest in self._taken:  # two files of one array parameter with the same name
            dest, n = f"{self.side}/{name}/{n}/{basename}", n + 1
        self._taken.add(dest)
        return dest

    def _file(self, name: str, path: Path, value: dict[str, Any]) -> Entity:
        sums = digests(path)
        cwltool_sum = str(value.get("checksum", ""))
        if cwltool_sum.startswith("sha1$"):
            sums["sha1"] = cwltool_sum.removeprefix("sha1$")
        props = {
            "name": value.get("basename") or path.name,
            "contentSize": str(path.stat().st_size),
            "alternateName": str(path),  # where the run had it
            **sums,
        }
        return self.crate.add_file(path, self._dest(name, path.name), properties=props)

    def _directory(self, name: str, path: Path) -> Entity:
        dest = self._dest(name, path.name) + "/"
        return self.crate.add_dataset(
            path, dest, properties={"name": path.name, "alternateName": str(path)}
        )


def _is_file(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class") in ("File", "Directory")
