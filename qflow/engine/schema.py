"""qflow's CWL extension vocabulary, registered with cwltool next to cwltool's own.

cwltool keeps one custom schema per CWL version, so qflow's records are appended to
cwltool's extension schema (which brings ``cwltool:Loop``) rather than replacing it.
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from importlib.resources import files

from cwltool.main import setup_schema
from cwltool.process import use_custom_schema
from ruamel.yaml import YAML

QFLOW_NAMESPACE = "https://qflow.dev/ns#"
QUANTUM_CANDIDATE = QFLOW_NAMESPACE + "QuantumCandidate"

QFLOW_RECORDS = [
    {
        "name": "qflow:QuantumCandidate",
        "type": "record",
        "inVocab": False,
        "extends": "cwl:ProcessRequirement",
        "doc": "Marks a step as a quantum candidate: its run is the classical implementation; "
        "qflow may run it on a quantum location and falls back to a classical one "
        "when no quantum location can take it in time.",
        "fields": [
            {
                "name": "class",
                "type": "string",
                "doc": "Always 'QuantumCandidate'",
                "jsonldPredicate": {"_id": "@type", "_type": "@vocab"},
            },
            {
                "name": "quantum",
                "type": ["null", "string"],
                "jsonldPredicate": {"_type": "@id", "noLinkCheck": True},
                "doc": "The quantum implementation (a CommandLineTool file, relative to "
                "this document), with the same inputs and outputs as the step's run.",
            },
        ],
    }
]


@cache
def _schema_text(version_file: str) -> str:
    yaml = YAML(typ="safe")
    schema = yaml.load(files("cwltool").joinpath(version_file).read_text("utf-8"))
    schema.setdefault("$namespaces", {})["qflow"] = QFLOW_NAMESPACE
    schema["$graph"].extend(QFLOW_RECORDS)
    return json.dumps(schema)  # JSON is YAML, and much faster to write than YAML


def install_schemas() -> None:
    """cwltool's extensions (Loop, ...) plus qflow's, for every CWL version qflow reads."""
    setup_schema(argparse.Namespace(enable_ext=True), None)
    use_custom_schema("v1.2", "http://commonwl.org/cwltool", _schema_text("extensions-v1.2.yml"))
