"""qflow's CWL extension vocabulary, registered with cwltool next to cwltool's own.

cwltool keeps one custom schema per CWL version, so qflow's records are appended to
cwltool's extension schema (which brings ``cwltool:Loop``) rather than replacing it.
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files
from pathlib import Path

from cwltool.main import setup_schema
from cwltool.process import use_custom_schema

from qflow.engine.schema_cache import load_schemas

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


def _schema_text(version_file: str) -> str:
    """cwltool's extension schema, ``$import``-ed by file URL, plus qflow's records: the
    schema loader reads cwltool's file once, as it does for cwltool alone (parsing it here
    to append to it cost ~60 ms of every start)."""
    extensions = Path(str(files("cwltool").joinpath(version_file))).as_uri()
    schema = {
        "$base": "http://commonwl.org/cwltool#",
        "$namespaces": {
            "cwl": "https://w3id.org/cwl/cwl#",
            "cwltool": "http://commonwl.org/cwltool#",
            "qflow": QFLOW_NAMESPACE,
        },
        "$graph": [{"$import": extensions}, *QFLOW_RECORDS],
    }
    return json.dumps(schema)  # JSON is YAML


def install_schemas() -> None:
    """cwltool's extensions (Loop, ...) plus qflow's, for every CWL version qflow reads,
    loaded from the schema cache where an earlier run left them (schema_cache.py)."""
    setup_schema(argparse.Namespace(enable_ext=True), None)
    use_custom_schema("v1.2", "http://commonwl.org/cwltool", _schema_text("extensions-v1.2.yml"))
    load_schemas()
