"""Ending what a crashed run left alive, from its journal (``--resume``, ``qflow clean``)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from qflow.placement import HOST
from qflow.placement.qpus import withdraw_orphan_lease
from qflow.quantum import QuantumConnector, QuantumLocationConfig
from qflow.registry import connector_class

if TYPE_CHECKING:
    from qflow.deployment import Deployment
    from qflow.engine.connectors import ConnectorPool
    from qflow.rundir.journal import Journal, Resource

_logger = logging.getLogger("qflow")


async def end_leftovers(
    leftovers: list[Resource], deployment: Deployment, pool: ConnectorPool, journal: Journal
) -> tuple[list[str], list[str]]:
    """End every resource in ``leftovers`` (concurrently), mark each ended in ``journal``.

    Returns what was ended and what could not be (with why), as lines for the user.
    """
    quantum: dict[str, QuantumConnector[QuantumLocationConfig]] = {}

    async def end(resource: Resource) -> None:
        if resource.kind == "qpu-lease":
            await withdraw_orphan_lease(deployment, resource)
        elif resource.kind == "qpu-task":
            await (await _quantum(resource.location)).cancel_orphan(resource)
        elif resource.location == HOST or resource.location in deployment.locations:
            await (await pool.get(resource.location)).cancel_orphan(resource)
        else:
            raise LookupError(
                f"location {resource.location} is not in the deployment any more; end it by hand"
            )
        journal.ended(resource)

    async def _quantum(location: str) -> QuantumConnector[QuantumLocationConfig]:
        if location not in quantum:
            config = deployment.locations[location]
            cls = connector_class(config.connector)
            if not (
                issubclass(cls, QuantumConnector) and isinstance(config, QuantumLocationConfig)
            ):
                raise TypeError(f"location {location} is not a QPU any more; end it by hand")
            connector = cls(location, config)
            await connector.start()
            quantum[location] = connector
        return quantum[location]

    results = await asyncio.gather(*(end(r) for r in leftovers), return_exceptions=True)
    for connector in quantum.values():
        await connector.stop()
    ended, failed = [], []
    for resource, result in zip(leftovers, results, strict=True):
        if isinstance(result, BaseException):
            failed.append(f"{resource.describe()}: {type(result).__name__}: {result}")
        else:
            ended.append(resource.describe())
    return ended, failed
