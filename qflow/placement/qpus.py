"""Virtual-QPU leases for placement, from the gateways of the deployment's quantum locations.

Quantum locations without a ``gateway`` URL share one gateway embedded in this run: placement
calls it directly (no HTTP inside one process); it also serves the steps' client commands on
127.0.0.1 with per-step tokens. Locations with a ``gateway`` URL lease from that site-wide
gateway over HTTP; such a lease outlives this process, so it is journalled (with the key the
gateway will know it by) before it is asked for, and a crashed run's clean-up withdraws it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from typing import TYPE_CHECKING, Any

from qflow.gateway.leases import LeaseRefused, LeaseSummary
from qflow.placement.model import Lease
from qflow.quantum import QuantumLocationConfig
from qflow.rundir.journal import NO_JOURNAL, Journal, Resource
from qflow.secrets import resolve_secret

if TYPE_CHECKING:
    from aiohttp import web

    from qflow.deployment import Deployment
    from qflow.gateway.client import GatewayClient
    from qflow.gateway.core import Gateway

_logger = logging.getLogger("qflow")


@dataclasses.dataclass
class _Embedded:
    gateway: Gateway
    runner: web.AppRunner
    url: str


class QpuLeases:
    """Leases on the deployment's quantum locations (lives on the dispatcher's loop)."""

    def __init__(self, deployment: Deployment, journal: Journal = NO_JOURNAL) -> None:
        self.deployment = deployment
        self.journal = journal
        self._remote: dict[str, GatewayClient] = {}
        self._embedded: _Embedded | None = None
        self._lock: asyncio.Lock | None = None
        self._held: dict[str, tuple[str, Resource | None]] = {}
        """Lease key -> its location and journal record (remote leases only)."""

    def is_quantum(self, location: str) -> bool:
        return isinstance(self.deployment.locations[location], QuantumLocationConfig)

    def config(self, location: str) -> QuantumLocationConfig:
        config = self.deployment.locations[location]
        assert isinstance(config, QuantumLocationConfig)
        return config

    def _remote_client(self, config: QuantumLocationConfig) -> GatewayClient:
        from qflow.gateway.client import GatewayClient  # the HTTP stack, only when used

        assert config.gateway is not None
        if config.gateway not in self._remote:
            token = resolve_secret(config.gateway_token or "")
            self._remote[config.gateway] = GatewayClient(config.gateway, token)
        return self._remote[config.gateway]

    async def _embedded_gateway(self) -> _Embedded:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._embedded is None:
                from qflow.gateway.core import Gateway  # only for runs with QPUs
                from qflow.gateway.http import start_gateway
                from qflow.gateway.service import quantum_connectors

                connectors = {
                    name: c
                    for name, c in quantum_connectors(self.deployment).items()
                    if not self.config(name).gateway
                }
                gateway = Gateway(connectors, secrets.token_urlsafe(24), self.journal)
                runner, url = await start_gateway(gateway)
                self._embedded = _Embedded(gateway, runner, url)
            return self._embedded

    # -- leases -----------------------------------------------------------------------------
    async def lease(self, location: str, step: str, max_wait: float) -> Lease:
        """A virtual QPU of ``location`` within ``max_wait`` (+ one QPU request timeout);
        :class:`~qflow.gateway.LeaseRefused` says why not. Cancelling it leaves nothing."""
        config = self.config(location)
        remote_name = config.gateway_location or location
        if not config.gateway:
            embedded = await self._embedded_gateway()
            granted = await embedded.gateway.lease(location, step, max_wait)
            self._held[granted.id] = (location, None)
            return Lease(granted.id, granted.token, embedded.url)
        client = self._remote_client(config)
        resource = self.journal.intend("qpu-lease", location, {"gateway": client.url}, step=step)
        key = lease_key(resource)
        try:
            token = await client.lease(remote_name, step, max_wait, key)
        except BaseException:
            # refused, or cancelled while waiting: the gateway must never grant it later
            with contextlib.suppress(Exception):
                await asyncio.shield(client.release(key))
            self.journal.ended(resource)
            raise
        self._held[key] = (location, resource)
        return Lease(key, token, client.url)

    async def release(self, lease: Lease) -> LeaseSummary:
        """Give a lease back: the QPU time its tasks used and how they ended."""
        location, resource = self._held.pop(lease.key)
        if resource is None:
            embedded = await self._embedded_gateway()
            return await embedded.gateway.release(lease.key)
        summary = await self._remote_client(self.config(location)).release(lease.key)
        self.journal.ended(resource)
        return summary or LeaseSummary(0.0, [], ["the gateway no longer knew the lease"])

    async def info(self, location: str) -> dict[str, Any]:
        """The location's vQPUs and the QPU's queue, for estimates (``online`` False with a
        ``detail`` when it cannot be had)."""
        config = self.config(location)
        try:
            if not config.gateway:
                return await (await self._embedded_gateway()).gateway.info(location)
            remote = config.gateway_location or location
            return await self._remote_client(config).info(remote)
        except LeaseRefused as exc:
            return {"online": False, "detail": str(exc)}

    async def close(self) -> None:
        """Release every lease still held (an interrupted run), stop the embedded gateway."""
        for key, (location, _) in list(self._held.items()):
            lease = Lease(key, "", "")
            try:
                await self.release(lease)
            except Exception as exc:  # noqa: BLE001 - go on releasing the others
                _logger.warning("releasing QPU lease %s of %s: %s", key, location, exc)
        for client in self._remote.values():
            await client.close()
        if self._embedded is not None:
            await self._embedded.gateway.close()
            await self._embedded.runner.cleanup()
            self._embedded = None


def lease_key(resource: Resource) -> str:
    """The key a site-wide gateway knows a journalled lease by."""
    return f"qflow-{resource.id}"


async def withdraw_orphan_lease(deployment: Deployment, resource: Resource) -> None:
    """Release (or withdraw the request of) a site-wide gateway lease that a crashed run
    journalled (kind ``qpu-lease``): its slot comes back and its tasks are stopped."""
    config = deployment.locations.get(resource.location)
    if not isinstance(config, QuantumLocationConfig) or not config.gateway:
        return
    from qflow.gateway.client import GatewayClient  # the HTTP stack, only when used

    client = GatewayClient(config.gateway, resolve_secret(config.gateway_token or ""))
    try:
        await client.release(lease_key(resource))
    finally:
        await client.close()
