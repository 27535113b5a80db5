"""The ``emulator`` quantum connector: a QPU emulator started inside this qflow run.

It is the QPU of the embedded default deployment: no service to start, no credential to
manage (the token is random, lives in this process only and is registered for redaction).
Everything else is the ``rest`` connector talking HTTP to the emulator on 127.0.0.1.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from qflow.connectors.rest import Endpoint, RestClient
from qflow.emulator.backends import BACKENDS, DEFAULT_BACKEND
from qflow.quantum import QuantumLocationConfig
from qflow.rundir.journal import Resource
from qflow.secrets import register_secret

if TYPE_CHECKING:
    from aiohttp import web

Backend = Literal[tuple(BACKENDS)]  # type: ignore[valid-type]


class EmulatorConfig(QuantumLocationConfig):
    backend: Backend = Field(  # type: ignore[valid-type]
        default=DEFAULT_BACKEND,
        description="QPU technology whose latency is emulated: "
        + "; ".join(f"{name}: {b.description}" for name, b in BACKENDS.items()),
    )
    time_scale: float = Field(
        default=1.0,
        ge=0,
        description="Factor on the backend's latency (0.1 makes a 2-minute neutral-atom task "
        "take 12 s).",
    )


class EmulatorConnector(RestClient[EmulatorConfig]):
    """A QPU emulator in this process, reached through the ``rest`` connector's client."""

    Config = EmulatorConfig

    def __init__(self, location: str, config: EmulatorConfig) -> None:
        super().__init__(location, config, Endpoint(url="", token_reference=""))
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        token = secrets.token_urlsafe(24)
        register_secret(token)
        from qflow.emulator.http import start_emulator  # the HTTP stack: only when used

        self._runner, url = await start_emulator(
            token, backend=self.config.backend, time_scale=self.config.time_scale
        )
        self.endpoint = Endpoint(url=url, token_reference="")
        await self._open(token)

    async def cancel_orphan(self, resource: Resource) -> None:
        """Nothing to stop: the emulator and its tasks lived in the crashed process."""

    async def stop(self) -> None:
        await super().stop()
        if self._runner is not None:
            from qflow.emulator.http import stop_emulator

            await stop_emulator(self._runner)
            self._runner = None
