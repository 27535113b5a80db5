"""The execution connectors of a run: created and started on first use, stopped at the end."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from qflow.connector import (
    AllocationRecord,
    Connector,
    ConnectorContext,
    LocationConfig,
)
from qflow.placement import HOST
from qflow.registry import connector_class
from qflow.rundir.journal import NO_JOURNAL, Journal

if TYPE_CHECKING:
    from qflow.deployment import Deployment

_logger = logging.getLogger("qflow")


class ConnectorPool:
    """One connector per classical location (and one for QPU clients on this host)."""

    def __init__(
        self,
        deployment: Deployment,
        journal: Journal = NO_JOURNAL,
        report_allocation: Callable[[AllocationRecord], None] | None = None,
    ) -> None:
        self.deployment = deployment
        self.context = ConnectorContext(journal, deployment.policy.allocation, report_allocation)
        """What every connector of the run is created with."""
        self._connectors: dict[str, Connector[LocationConfig]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, location: str) -> Connector[LocationConfig]:
        """The location's connector (:data:`~qflow.placement.HOST`: this host's), started
        once."""
        lock = self._locks.setdefault(location, asyncio.Lock())
        async with lock:
            if location not in self._connectors:
                connector = self._create(location)
                await connector.start()
                self._connectors[location] = connector
            return self._connectors[location]

    def _create(self, location: str) -> Connector[LocationConfig]:
        config = (
            LocationConfig(connector="local")  # this host: the local connector, as registered
            if location == HOST
            else self.deployment.locations[location]
        )
        cls = connector_class(config.connector)
        if not issubclass(cls, Connector):
            raise TypeError(f"location {location} is a QPU: its connector runs no command")
        if takes_context(cls):
            return cls(location, config, self.context)
        connector = cls(location, config)  # written before the context: given it right after
        connector.context = self.context
        return connector

    def started(self) -> list[Connector[LocationConfig]]:
        return list(self._connectors.values())

    async def stop(self) -> None:
        results = await asyncio.gather(
            *(c.stop() for c in self._connectors.values()), return_exceptions=True
        )
        for connector, result in zip(self._connectors.values(), results, strict=True):
            if isinstance(result, BaseException):
                _logger.warning("stopping %s: %s", connector.location, result)
        self._connectors.clear()


def takes_context(cls: type[Connector[LocationConfig]]) -> bool:
    """Whether ``cls(location, config, context)`` works: false for a connector whose own
    ``__init__`` takes only a location and a config (the contract before the context)."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # no signature to read: assume the current contract
        return True
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return len(parameters) > 2 or any(p.kind in variadic for p in parameters)
