"""The orchestrator's side of a site-wide QPU gateway (HTTP, admin token)."""

from __future__ import annotations

from typing import Any

import aiohttp

from qflow.gateway.leases import REQUEST_TIMEOUT_S, LeaseRefused, LeaseSummary


class GatewayClient:
    """Admin client of one gateway: leases by key, their release, location info."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def _call(
        self, method: str, path: str, timeout: float, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        try:
            async with self._http().request(
                method,
                f"{self.url}{path}",
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise LeaseRefused(f"QPU gateway {self.url} is unreachable: {why}") from None
        return resp.status, data if isinstance(data, dict) else {}

    async def lease(self, location: str, step: str, max_wait: float, key: str) -> str:
        """A lease (its step token) within ``max_wait`` plus one request timeout."""
        body = {"location": location, "step": step, "max_wait": max_wait, "key": key}
        status, data = await self._call(
            "POST", "/v1/leases", max_wait + 2 * REQUEST_TIMEOUT_S, body
        )
        if status != 201:
            error = str(data.get("error") or f"gateway answered {status}")
            raise LeaseRefused(error, busy=bool(data.get("busy")))
        return str(data["token"])

    async def release(self, key: str) -> LeaseSummary | None:
        """Give the lease back (or withdraw its request); None if the gateway had none."""
        status, data = await self._call("DELETE", f"/v1/leases/{key}", 4 * REQUEST_TIMEOUT_S)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"releasing lease at {self.url}: {data.get('error', status)}")
        return LeaseSummary.from_json(data)

    async def info(self, location: str) -> dict[str, Any]:
        status, data = await self._call("GET", f"/v1/locations/{location}", 2 * REQUEST_TIMEOUT_S)
        if status != 200:
            raise LeaseRefused(str(data.get("error") or f"gateway answered {status}"))
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
