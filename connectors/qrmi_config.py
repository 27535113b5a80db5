"""The ``qrmi`` location's keys: the QRMI resource, its settings and credential references.

Checked at validation, before anything runs: the resource type, settings that QRMI requires,
credentials kept out of ``environment`` (they go in ``secrets``, as references only).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from qflow.connectors.sdk_extras import IBM_MODULES, missing_modules, require_extra
from qflow.quantum import QuantumLocationConfig
from qflow.secrets import REFERENCE, SecretReference, check_reference

QRMI_EXTRA = "qrmi"
RESOURCE_TYPES = {
    "ibm-quantum-compute-service": "IBMQuantumComputeService",
    "qiskit-runtime-service": "IBMQiskitRuntimeService",
    "ibm-quantum-system": "IBMQuantumSystem",
    "pasqal-cloud": "PasqalCloud",
    "pasqal-local": "PasqalLocal",
    "iqm-server": "IQMServer",
    "alice-bob-felis": "AliceBobFelis",
    "oqtopus": "OQTOPUS",
}
IBM_TYPES = frozenset(
    {"ibm-quantum-compute-service", "qiskit-runtime-service", "ibm-quantum-system"}
)
PASQAL_TYPES = frozenset({"pasqal-cloud", "pasqal-local"})
REQUIRED = {
    "ibm-quantum-compute-service": (
        "QRMI_IBM_QCS_ENDPOINT",
        "QRMI_IBM_QCS_IAM_ENDPOINT",
        "QRMI_IBM_QCS_IAM_APIKEY",
        "QRMI_IBM_QCS_SERVICE_CRN",
    ),
}
"""Settings QRMI requires, where known (checked at validation, before anything runs)."""
CREDENTIAL = re.compile(r"APIKEY|API_KEY|TOKEN|SECRET|PASSWORD|ACCESS_KEY", re.IGNORECASE)
SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def setting_name(resource: str, key: str) -> str:
    """``<resource>_QRMI_X`` → ``QRMI_X`` (QRMI's config keys carry no resource prefix)."""
    prefix = f"{resource}_"
    return key[len(prefix) :] if key.startswith(prefix) else key


class QrmiConfig(QuantumLocationConfig):
    resource: str = Field(description="QRMI resource id (e.g. the backend name ibm_torino).")
    type: Literal[tuple(RESOURCE_TYPES)] = Field(  # type: ignore[valid-type]
        description="QRMI resource type: " + ", ".join(RESOURCE_TYPES) + "."
    )
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="QRMI settings (QRMI_IBM_QCS_ENDPOINT, ...; the RESOURCE_ prefix that "
        "QRMI's environment variables carry is optional); values literal or ${env:NAME}/"
        "${file:PATH} references. Credentials go in secrets.",
    )
    secrets: dict[str, SecretReference] = Field(
        default_factory=dict,
        description="QRMI credential settings (QRMI_IBM_QCS_IAM_APIKEY, ...), as references "
        "only: ${env:NAME} or ${file:PATH}.",
    )
    shots: int = Field(default=1024, ge=1, le=100_000, description="Shots per QAOA circuit.")
    reps: int = Field(default=1, ge=1, le=10, description="QAOA layers (p) for qubo tasks.")
    max_variables: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Largest QUBO accepted (also capped by the backend's qubits).",
    )
    optimization_level: int = Field(
        default=1, ge=0, le=3, description="Qiskit transpiler optimisation level."
    )

    @field_validator("environment")
    @classmethod
    def _check_environment(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not SETTING.match(key):
                raise ValueError(f"environment key {key!r} is not a setting name")
            if CREDENTIAL.search(key):
                raise ValueError(
                    f"{key} is a credential: it is not accepted in environment. "
                    f"Fix: move it to secrets as {key}: ${{env:NAME}}"
                )
            if REFERENCE.match(text):
                check_reference(text)
        return value

    @model_validator(mode="after")
    def _check(self) -> QrmiConfig:
        require_extra("qrmi", QRMI_EXTRA, ("qrmi",))
        if self.type in IBM_TYPES:
            missing = missing_modules(IBM_MODULES[:2])
            if missing:
                raise ValueError(
                    f"{self.type} resources need {', '.join(missing)} (QAOA circuits, "
                    "transpiling, result decoding), which is not installed. "
                    "Fix: pip install 'qflow[qrmi,ibm]'"
                )
        given = {setting_name(self.resource, k) for k in [*self.environment, *self.secrets]}
        absent = [k for k in REQUIRED.get(self.type, ()) if k not in given]
        if absent:
            raise ValueError(
                f"a {self.type} resource needs {', '.join(absent)}. Fix: add them under "
                "environment (endpoints, CRN) or secrets (the API key, as ${env:NAME})"
            )
        return self
