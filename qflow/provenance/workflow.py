"""The prospective half of a provenance crate: the workflow as cwltool loaded it.

The main CWL file becomes the crate's ``mainEntity`` (a ``ComputationalWorkflow`` and a
``HowTo``), every file it references (sub-workflows, tools, a quantum candidate's quantum
implementation, files given as input defaults such as a step's script) is copied under
``workflow/`` with its path relative to the main file kept, and every step is a ``HowToStep``
whose ``workExample`` is the tool it runs. The tree is walked on the process objects cwltool
built for the run, so what is described is exactly what ran.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cwltool.process import Process, shortname
from cwltool.workflow import Workflow
from rocrate.model.contextentity import ContextEntity
from rocrate.model.entity import Entity
from rocrate.rocrate import ROCrate

from qflow.engine.tools import QflowCommandLineTool

WORKFLOW_DIR = "workflow"

_ADDITIONAL_TYPES = {
    "int": "Integer", "long": "Integer", "float": "Float", "double": "Float",
    "string": "Text", "boolean": "Boolean", "File": "File", "Directory": "Dataset",
}  # fmt: skip
"""CWL type -> the FormalParameter's ``additionalType`` (Workflow Run Crate's mapping)."""


@dataclasses.dataclass
class StepEntities:
    """What the crate says about one workflow step (keyed by its step path)."""

    howto: Entity | None
    """The ``HowToStep`` (None for a bare tool run as the whole workflow)."""
    tool: Entity
    """The classical implementation (the step's ``run``)."""
    quantum_tool: Entity | None = None
    """A quantum candidate's quantum implementation (``qflow:QuantumCandidate``)."""


@dataclasses.dataclass
class WorkflowEntities:
    main: Entity
    steps: dict[str, StepEntities]
    inputs: dict[str, Entity]
    """Input name -> its ``FormalParameter``."""
    outputs: dict[str, Entity]


def local_path(uri: str) -> Path | None:
    """The file a ``file://`` URI names (None for anything else)."""
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


class WorkflowDescriber:
    """Adds the workflow's files, tools, steps and parameters to a crate, each once."""

    def __init__(self, crate: ROCrate, main_file: Path) -> None:
        self.crate = crate
        self.base = main_file.parent
        self._files: dict[Path, Entity] = {}
        self._tools: dict[str, Entity] = {}

    def describe(self, process: Process) -> WorkflowEntities:
        main = self._tool(process, main=True)
        steps: dict[str, StepEntities] = {}
        if isinstance(process, Workflow):
            self._steps(process, main, "", steps)
        else:  # a bare tool: qflow names its only step /<tool name>
            path = "/" + shortname(process.tool["id"]).removesuffix(".cwl")
            steps[path] = StepEntities(None, main, self._quantum_tool(process))
        return WorkflowEntities(
            main=main,
            steps=steps,
            inputs=self._parameters(process, main, "input"),
            outputs=self._parameters(process, main, "output"),
        )

    def _steps(
        self, wf: Workflow, entity: Entity, prefix: str, out: dict[str, StepEntities]
    ) -> None:
        for position, step in enumerate(wf.steps):
            name = shortname(step.id)
            path = f"{prefix}/{name}"
            tool = self._tool(step.embedded_tool)
            quantum = self._quantum_tool(step.embedded_tool)
            howto = self.crate.add(ContextEntity(self.crate, f"{entity.id}#{name}", properties={
                "@type": "HowToStep", "name": path, "position": str(position),
            }))  # fmt: skip
            howto["workExample"] = [tool, quantum] if quantum else tool
            entity.append_to("step", howto)
            entity.append_to("hasPart", tool)
            if quantum is not None:
                entity.append_to("hasPart", quantum)
            out[path] = StepEntities(howto, tool, quantum)
            if isinstance(step.embedded_tool, Workflow):
                self._steps(step.embedded_tool, tool, path, out)

    def _quantum_tool(self, process: Process) -> Entity | None:
        if not isinstance(process, QflowCommandLineTool):
            return None
        quantum = process.quantum_implementation()
        return self._tool(quantum) if quantum is not None else None

    def _tool(self, process: Process, main: bool = False) -> Entity:
        """The entity of a loaded process: its file, or a part of a file for an inline one."""
        uri = process.tool["id"]
        if uri in self._tools:
            return self._tools[uri]
        is_workflow = isinstance(process, Workflow)
        types = ["File", "SoftwareSourceCode", "ComputationalWorkflow"] if is_workflow or main \
            else ["File", "SoftwareApplication"]  # fmt: skip
        if is_workflow:
            types.append("HowTo")
        props: dict[str, Any] = {"@type": types}
        for key, doc_key in (("name", "label"), ("description", "doc")):
            if process.tool.get(doc_key):
                props[key] = process.tool[doc_key]
        path = local_path(uri)
        fragment = urlsplit(uri).fragment
        if path is not None and path.is_file() and fragment in ("", "main"):
            entity = self._file(path, props, workflow=is_workflow or main, main=main)
        else:  # described inside another file (inline `run:`, packed document)
            where = self._file(path, {}).id if path is not None and path.is_file() else ""
            props["@type"] = [t for t in types if t != "File"]
            entity = self.crate.add(ContextEntity(self.crate, f"{where}#{fragment}", props))
        self._tools[uri] = entity
        self._referenced_files(process)
        return entity

    def _file(
        self, path: Path, props: dict[str, Any], workflow: bool = False, main: bool = False
    ) -> Entity:
        if path in self._files:
            existing = self._files[path]
            if props:
                existing.properties().update(props)
            return existing
        try:
            dest = f"{WORKFLOW_DIR}/{path.relative_to(self.base).as_posix()}"
        except ValueError:  # outside the main workflow's directory
            dest = f"{WORKFLOW_DIR}/external/{len(self._files)}/{path.name}"
        if workflow:
            entity = self.crate.add_workflow(path, dest, main=main, lang="cwl", properties=props)
        else:
            entity = self.crate.add_file(path, dest, properties=props)
        self._files[path] = entity
        return entity

    def _referenced_files(self, process: Process) -> None:
        """Files a tool names as input defaults (a step's script): copied with the tool."""
        for param in process.tool.get("inputs", []):
            default = param.get("default")
            if isinstance(default, dict) and default.get("class") == "File":
                path = local_path(str(default.get("location", "")))
                if path is not None and path.is_file():
                    self._file(path, {"name": path.name})

    def _parameters(self, process: Process, main: Entity, kind: str) -> dict[str, Entity]:
        """The main workflow's inputs or outputs as FormalParameters (``kind``: input/output)."""
        params: dict[str, Entity] = {}
        for param in process.tool.get(f"{kind}s", []):
            name = shortname(param["id"])
            additional, required, many = _parameter_type(param.get("type"))
            properties = {"multipleValues": True} if many else {}
            entity = self.crate.add_formal_parameter(
                name,
                additional,
                identifier=f"{main.id}#{kind}s/{name}",
                description=param.get("doc"),
                valueRequired=required,
                properties=properties,
            )
            main.append_to(kind, entity)
            params[name] = entity
        return params


def _parameter_type(cwl_type: Any) -> tuple[str, bool, bool]:
    """(additionalType, required, array) of a CWL parameter type."""
    required = True
    if isinstance(cwl_type, list):  # a union; ["null", X] is an optional X
        required = "null" not in cwl_type
        rest = [t for t in cwl_type if t != "null"]
        cwl_type = rest[0] if len(rest) == 1 else "Any"
    if isinstance(cwl_type, dict) and cwl_type.get("type") == "array":
        additional, _, _ = _parameter_type(cwl_type.get("items"))
        return additional, required, True
    if isinstance(cwl_type, dict) and cwl_type.get("type") == "enum":
        return "Text", required, False
    if isinstance(cwl_type, str):
        return _ADDITIONAL_TYPES.get(shortname(cwl_type), "PropertyValue"), required, False
    return "PropertyValue", required, False
