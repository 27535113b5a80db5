"""``qflow gateway DEPLOYMENT``: a site-wide gateway for the QPUs of a deployment."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from qflow.gateway.core import Gateway
from qflow.gateway.http import start_gateway
from qflow.quantum import QuantumConnector, QuantumLocationConfig
from qflow.registry import connector_class

if TYPE_CHECKING:
    from qflow.deployment import Deployment


def main(argv: list[str] | None = None) -> int:
    """``qflow gateway DEPLOYMENT``: a site-wide gateway for the deployment's QPUs."""
    from qflow.deployment import DeploymentError, load_deployment
    from qflow.emulator.service import port_number
    from qflow.secrets import SecretError, resolve_secret

    parser = argparse.ArgumentParser(prog="qflow gateway", description=main.__doc__)
    parser.add_argument("deployment", help="deployment.yml whose quantum locations to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--admin-token",
        required=True,
        help="reference to the admin token orchestrators present: ${env:NAME} or ${file:PATH}",
    )
    args = parser.parse_args(argv)
    try:
        deployment = load_deployment(args.deployment)
        admin = resolve_secret(args.admin_token)
    except (DeploymentError, SecretError) as exc:
        print(f"qflow gateway: error: {exc}", file=sys.stderr)
        return 2
    connectors = quantum_connectors(deployment)
    if not connectors:
        print(f"qflow gateway: error: {args.deployment} has no quantum location", file=sys.stderr)
        return 2

    async def serve() -> None:
        gateway = Gateway(connectors, admin)
        runner, url = await start_gateway(gateway, args.host, args.port)
        print(f"qflow gateway listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gateway.close()
        await runner.cleanup()

    asyncio.run(serve())
    return 0


def quantum_connectors(
    deployment: Deployment,
) -> dict[str, QuantumConnector[QuantumLocationConfig]]:
    """Instances of the quantum connectors of a deployment's locations, by location name."""
    found: dict[str, QuantumConnector[QuantumLocationConfig]] = {}
    for name, config in deployment.locations.items():
        cls = connector_class(config.connector)
        if issubclass(cls, QuantumConnector) and isinstance(config, QuantumLocationConfig):
            found[name] = cls(name, config)
    return found
