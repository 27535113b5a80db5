"""The ``shared-qpu`` location: a QPU served by a site-wide qflow gateway.

The orchestrator holds no vendor credential for it, only the gateway's URL and admin
token: the gateway (``qflow gateway deployment.yml``) holds the real quantum connector.
Leases and tasks go through the gateway; this class only carries the location's keys.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic import Field

from qflow.quantum import QpuStatus, QuantumConnector, QuantumLocationConfig, TaskBody, TaskInfo
from qflow.secrets import SecretReference


class SharedQpuConfig(QuantumLocationConfig):
    gateway: str = Field(
        description="URL of the site-wide QPU gateway (qflow gateway) that serves this QPU."
    )
    gateway_token: SecretReference = Field(
        description="The gateway's admin token, as a reference: ${env:NAME} or ${file:PATH}."
    )


class SharedQpu(QuantumConnector[SharedQpuConfig]):
    """Marker connector: every call for this location is made by the gateway."""

    Config = SharedQpuConfig

    def _remote(self) -> NoReturn:
        raise RuntimeError(
            f"{self.location} is served by the gateway at {self.config.gateway}; "
            "qflow talks to that gateway, not to the QPU"
        )

    async def status(self) -> QpuStatus:
        self._remote()

    async def task_start(self, task: TaskBody, idempotency_key: str) -> str:
        self._remote()

    async def task_status(self, task_id: str) -> TaskInfo:
        self._remote()

    async def task_result(self, task_id: str) -> dict[str, Any]:
        self._remote()

    async def task_stop(self, task_id: str) -> None:
        self._remote()
