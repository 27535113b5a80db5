"""Placing steps on quantum locations: leases from gateways, fallback reasons.

Lives on the dispatcher's event loop. Quantum locations without a ``gateway`` URL share one
gateway embedded in this run (started on first use, on 127.0.0.1 with a random admin
token); the others talk to their site-wide gateway.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING

from qflow.engine.placement import NoPlacement, Placement
from qflow.gateway import Gateway, LeaseRefused, quantum_connectors, start_gateway
from qflow.gateway_client import GatewayClient
from qflow.quantum import QuantumLocationConfig
from qflow.secrets import resolve_secret

if TYPE_CHECKING:
    from aiohttp import web

    from qflow.deployment import Deployment

_logger = logging.getLogger("qflow")


class QpuAccess:
    """Leases on the deployment's quantum locations, through their gateways."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._clients: dict[str, GatewayClient] = {}
        self._embedded: tuple[Gateway, web.AppRunner, GatewayClient] | None = None
        self._leases: dict[str, GatewayClient] = {}
        self._lock: asyncio.Lock | None = None

    def is_quantum(self, location: str) -> bool:
        return isinstance(self.deployment.locations[location], QuantumLocationConfig)

    def config(self, location: str) -> QuantumLocationConfig:
        config = self.deployment.locations[location]
        assert isinstance(config, QuantumLocationConfig)
        return config

    async def _client(self, location: str) -> GatewayClient:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            config = self.config(location)
            if config.gateway:
                if config.gateway not in self._clients:
                    token = resolve_secret(config.gateway_token or "")
                    self._clients[config.gateway] = GatewayClient(config.gateway, token)
                return self._clients[config.gateway]
            if self._embedded is None:
                self._embedded = await self._start_embedded()
            return self._embedded[2]

    async def _start_embedded(self) -> tuple[Gateway, web.AppRunner, GatewayClient]:
        connectors = {
            name: c
            for name, c in quantum_connectors(self.deployment).items()
            if not self.config(name).gateway
        }
        admin = secrets.token_urlsafe(24)
        gateway = Gateway(connectors, admin)
        runner, url = await start_gateway(gateway)
        return gateway, runner, GatewayClient(url, admin)

    async def place(
        self, step: str, candidates: list[str], *, skip_quantum: bool, reasons: list[str]
    ) -> Placement:
        """First candidate that takes the step: a QPU lease, else a classical location."""
        requested = time.time()
        reasons = list(reasons)
        for location in candidates:
            if not self.is_quantum(location):
                why = "; ".join(reasons) or None
                return Placement(location, False, fallback_reason=why, requested=requested)
            if skip_quantum:
                continue
            client = await self._client(location)
            config = self.config(location)
            try:
                grant = await client.lease(
                    config.gateway_location or location, step, config.max_wait
                )
            except LeaseRefused as exc:
                _logger.warning("%s: %s", step, exc)
                reasons.append(str(exc))
                continue
            self._leases[grant.lease_id] = client
            return Placement(
                location, True, grant.lease_id, grant.token, client.url, requested=requested
            )
        why = "; ".join(reasons) or "its candidates are all quantum locations"
        raise NoPlacement(f"no location can take {step}: {why}")

    async def release(self, placement: Placement) -> float:
        """Give a lease back; the QPU-seconds its tasks used."""
        assert placement.lease_id is not None
        client = self._leases.pop(placement.lease_id, None)
        if client is None:
            return 0.0
        return await client.release(placement.lease_id)

    async def close(self) -> None:
        """Release every lease still held (an interrupted run), stop the embedded gateway."""
        for lease_id, client in list(self._leases.items()):
            try:
                await client.release(lease_id)
            except Exception as exc:  # noqa: BLE001 - go on releasing the others
                _logger.warning("releasing QPU lease %s: %s", lease_id, exc)
        self._leases.clear()
        for client in self._clients.values():
            await client.close()
        if self._embedded is not None:
            gateway, runner, client = self._embedded
            await client.close()
            await gateway.close()
            await runner.cleanup()
            self._embedded = None
