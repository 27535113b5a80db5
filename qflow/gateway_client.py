"""The orchestrator's side of the QPU gateway: take and release virtual-QPU leases."""

from __future__ import annotations

import dataclasses

import aiohttp

from qflow.gateway import LeaseRefused


@dataclasses.dataclass(frozen=True)
class Grant:
    lease_id: str
    token: str


class GatewayClient:
    """Admin client of one gateway (embedded or site-wide)."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def lease(self, location: str, step: str, max_wait: float) -> Grant:
        body = {"location": location, "step": step, "max_wait": max_wait}
        timeout = aiohttp.ClientTimeout(total=max_wait + 30)
        try:
            async with self._http().post(
                f"{self.url}/v1/leases", json=body, timeout=timeout
            ) as resp:
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LeaseRefused(f"QPU gateway {self.url} is unreachable: {exc}") from None
        if resp.status != 201:
            raise LeaseRefused(str(data.get("error") or f"gateway answered {resp.status}"))
        return Grant(data["lease"], data["token"])

    async def release(self, lease_id: str) -> float:
        """Give the slot back; returns the QPU-seconds the lease's tasks used."""
        async with self._http().delete(f"{self.url}/v1/leases/{lease_id}") as resp:
            data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"releasing lease at {self.url}: {data.get('error', resp.status)}")
        return float(data["qpu_seconds"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
