"""deployment.yml: where each workflow step may run, validated before anything is allocated.

A deployment declares the locations L (each served by a connector), the bindings M from step
paths to ordered candidate locations, and the policies. Every problem is reported at once, as
``FILE:LINE: key.path: what is wrong. Fix: what to do``, so a user fixes the file in one pass
and ``qflow run`` can exit 2 before submitting anything.

Modules: :mod:`~qflow.deployment.model` (the validated deployment and its lookups),
:mod:`~qflow.deployment.loader` (files, text, the embedded default),
:mod:`~qflow.deployment.parser` and :mod:`~qflow.deployment.bindings_parser` (the YAML tree,
problem by problem, collected by :mod:`~qflow.deployment.problems`),
:mod:`~qflow.deployment.messages` (a pydantic error as "what. Fix: how"),
:mod:`~qflow.deployment.field_text` (config fields in words),
:mod:`~qflow.deployment.reference_table` (the Markdown reference),
:mod:`~qflow.deployment.yaml_nodes` and :mod:`~qflow.deployment.suggestions` (helpers).
"""

from qflow.deployment.bindings_parser import BINDING_OPTIONS
from qflow.deployment.loader import (
    EMBEDDED_DEFAULT,
    embedded_default,
    load_deployment,
    parse_deployment,
)
from qflow.deployment.model import (
    DEFAULT_BINDING,
    EMBEDDED_SOURCE,
    PLACEMENT_RULES,
    SCHEMA_VERSION,
    SUPPORTED_ALLOCATIONS,
    TOP_LEVEL_KEYS,
    Allocation,
    Deployment,
    DeploymentError,
    PlacementRule,
    Policy,
    UnboundStepError,
)
from qflow.deployment.reference_table import reference_markdown

__all__ = [
    "BINDING_OPTIONS",
    "DEFAULT_BINDING",
    "EMBEDDED_DEFAULT",
    "EMBEDDED_SOURCE",
    "PLACEMENT_RULES",
    "SCHEMA_VERSION",
    "SUPPORTED_ALLOCATIONS",
    "TOP_LEVEL_KEYS",
    "Allocation",
    "Deployment",
    "DeploymentError",
    "PlacementRule",
    "Policy",
    "UnboundStepError",
    "embedded_default",
    "load_deployment",
    "parse_deployment",
    "reference_markdown",
]
