"""The retrospective half of a provenance crate: what ran, from the run report's records.

One ``CreateAction`` for the workflow run (inputs as ``object``, outputs as ``result``), one
``CreateAction`` per step execution record of the report (the same records, not derived
again) with a ``ControlAction`` tying it to its ``HowToStep``, and an ``OrganizeAction`` for
qflow itself. qflow's own figures (location, connector, external id, node- and QPU-seconds,
fallback) are terms of qflow's vocabulary, declared in the crate's ``@context``.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cwltool.process import Process
from rocrate.model.contextentity import ContextEntity
from rocrate.model.entity import Entity
from rocrate.rocrate import ROCrate

from qflow import __version__
from qflow.deployment import EMBEDDED_DEFAULT, EMBEDDED_SOURCE, Deployment
from qflow.engine.schema import QFLOW_NAMESPACE
from qflow.provenance.values import ValueWriter
from qflow.provenance.workflow import StepEntities, WorkflowDescriber
from qflow.secrets import redact

PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": ("Process Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/workflow/0.5": ("Workflow Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/provenance/0.5": ("Provenance Run Crate", "0.5"),
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": ("Workflow RO-Crate", "1.0"),
}
WORKFLOW_RUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
QFLOW_TERMS = [
    "stepPath", "iteration", "connector", "externalId", "nodes", "nodeSeconds", "qpuSeconds",
    "quantum", "fallback", "fallbackReason", "placementReason", "submitted", "stepStatus",
    "qpuBackend", "sha1",
]  # fmt: skip
"""Terms of qflow's vocabulary (``https://qflow.dev/ns#``) the crate uses (docs/provenance.md)."""

ACTION_STATUS = {
    "success": "http://schema.org/CompletedActionStatus",
    "reused": "http://schema.org/CompletedActionStatus",
    "failed": "http://schema.org/FailedActionStatus",
    "cancelled": "http://schema.org/FailedActionStatus",
    "running": "http://schema.org/ActiveActionStatus",
    "queued": "http://schema.org/PotentialActionStatus",
}


def iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat()


def _id() -> str:
    return f"#{uuid.uuid4()}"


def build_crate(
    report: dict[str, Any], process: Process, job_order: Any, deployment: Deployment
) -> ROCrate:
    """The Workflow Run RO-Crate (provenance profile) of a run, in memory."""
    crate = ROCrate(version="1.1")
    crate.metadata.extra_contexts.append(WORKFLOW_RUN_CONTEXT)
    crate.metadata.extra_terms.update({t: QFLOW_NAMESPACE + t for t in QFLOW_TERMS})
    root = crate.root_dataset
    for profile, (name, version) in PROFILES.items():
        root.append_to("conformsTo", crate.add(ContextEntity(crate, profile, properties={
            "@type": "CreativeWork", "name": name, "version": version,
        })))  # fmt: skip
    workflow_file = Path(report["workflow"].split("#")[0]).resolve()  # "packed.cwl#main"
    root["name"] = f"qflow run of {workflow_file.name}"
    root["description"] = f"Provenance of a qflow run of {workflow_file} ({report['status']})"
    root["datePublished"] = iso(report["ended"])
    described = WorkflowDescriber(crate, workflow_file).describe(process)

    inputs = ValueWriter(crate, "inputs").add(job_order, described.inputs)
    inputs += _deployment_file(crate, deployment)
    outputs = ValueWriter(crate, "outputs").add(report.get("outputs"), described.outputs)
    run = crate.add_action(described.main, _id(), object=inputs, result=outputs, properties={
        "name": f"Run of {workflow_file.name}",
        "startTime": iso(report["started"]), "endTime": iso(report["ended"]),
        "actionStatus": {"@id": ACTION_STATUS[report["status"]]},
        "stepStatus": report["status"],
        "nodeSeconds": report["totals"]["node_seconds"],
        "qpuSeconds": report["totals"]["qpu_seconds"],
    })  # fmt: skip
    root.append_to("mentions", run)
    locations = _Locations(crate, deployment)
    controls = []
    for record in report["steps"]:
        step = described.steps.get(record["step"])
        if step is None:  # not a step of this workflow's tree: cannot be described
            continue
        action = crate.add(_step_action(crate, record, step, locations))
        if step.howto is not None:
            controls.append(crate.add(ContextEntity(crate, _id(), properties={
                "@type": "ControlAction", "name": f"orchestrate {record['step']}",
                "instrument": step.howto, "object": action,
            })))  # fmt: skip
    qflow_app = crate.add(ContextEntity(crate, "#qflow", properties={
        "@type": "SoftwareApplication", "name": "qflow", "softwareVersion": __version__,
    }))  # fmt: skip
    organize = crate.add(ContextEntity(crate, _id(), properties={
        "@type": "OrganizeAction", "name": f"Run of qflow {__version__}",
        "instrument": qflow_app, "result": run, "object": controls,
        "startTime": iso(report["started"]), "endTime": iso(report["ended"]),
    }))  # fmt: skip
    root.append_to("mentions", organize)
    trace = io.BytesIO((redact(json.dumps(report, indent=2)) + "\n").encode("utf-8"))
    crate.add_file(trace, "qflow-report.json", properties={
        "name": "qflow run report (docs/report.md)", "encodingFormat": "application/json",
        "about": run,
    })  # fmt: skip
    return crate


def _step_action(
    crate: ROCrate, record: dict[str, Any], step: StepEntities, locations: _Locations
) -> ContextEntity:
    """One step execution record of the report, as a CreateAction."""
    # a quantum placement runs the quantum implementation (a fallback record is classical)
    tool = step.quantum_tool if record["quantum"] and step.quantum_tool else step.tool
    iteration = record["iteration"]
    name = record["step"] + ("" if iteration is None else f" #{iteration}")
    props: dict[str, Any] = {
        "@type": "CreateAction", "name": f"Run of {name}", "instrument": tool,
        "stepPath": record["step"], "iteration": iteration,
        "location": locations.get(record["location"]), "connector": record["connector"],
        "externalId": record["external_id"], "quantum": record["quantum"],
        "nodes": record["nodes"], "nodeSeconds": record["node_seconds"],
        "qpuSeconds": record["qpu_seconds"],
        "fallback": record["fallback"], "fallbackReason": record["fallback_reason"],
        "placementReason": record.get("placement_reason"),
        "submitted": iso(record["submitted"]),
        "startTime": iso(record["started"]), "endTime": iso(record["ended"]),
        "actionStatus": {"@id": ACTION_STATUS[record["status"]]},
        "stepStatus": record["status"],
        "containerImage": container_image(crate, record),
    }  # fmt: skip
    if record["status"] in ("failed", "cancelled"):
        props["error"] = record.get("message") or record["status"]
    elif record.get("message"):
        props["description"] = record["message"]
    return ContextEntity(crate, _id(), properties=props)


def container_image(crate: ROCrate, record: dict[str, Any]) -> Entity | None:
    """The image the execution ran in: None until the report's records carry one (hook:
    a record's ``container_image``, an image reference such as ``docker.io/library/x:1``)."""
    image = record.get("container_image")
    if not image:
        return None
    identifier = f"#image/{image}"
    existing = crate.get(identifier)
    if existing is not None:
        return existing
    return crate.add(ContextEntity(crate, identifier, properties={
        "@type": "ContainerImage", "name": image,
        "additionalType": {"@id": "https://w3id.org/ro/terms/workflow-run#DockerImage"},
    }))  # fmt: skip


class _Locations:
    """One contextual entity per deployment location that ran something."""

    def __init__(self, crate: ROCrate, deployment: Deployment) -> None:
        self.crate, self.deployment = crate, deployment
        self._made: dict[str, Entity] = {}

    def get(self, name: str | None) -> Entity | None:
        if name is None:
            return None
        if name not in self._made:
            config = self.deployment.locations.get(name)
            props: dict[str, Any] = {"@type": "Place", "name": name}
            if config is not None:
                props["connector"] = config.connector
                backend = getattr(config, "backend", None)
                if backend is not None:  # the QPU (or emulated QPU kind) behind the location
                    props["qpuBackend"] = str(backend)
            self._made[name] = self.crate.add(
                ContextEntity(self.crate, f"#location/{name}", properties=props)
            )
        return self._made[name]


def _deployment_file(crate: ROCrate, deployment: Deployment) -> list[Entity]:
    """The deployment.yml the run used: a configuration file, so part of the run's object."""
    embedded = deployment.source == EMBEDDED_SOURCE
    path = Path(str(EMBEDDED_DEFAULT)) if embedded else Path(deployment.source)
    if not path.is_file():
        return []
    return [crate.add_file(path, f"deployment/{path.name}", properties={
        "name": "qflow deployment", "encodingFormat": "application/yaml",
    })]  # fmt: skip
