"""``qflow emulator``: serve one emulated QPU until SIGINT/SIGTERM.

The first stdout line is the URL, so a caller that asked for ``--port 0`` learns the port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys

from qflow.emulator.backends import BACKENDS, DEFAULT_BACKEND
from qflow.emulator.faults import FAULT_MODES, Faults
from qflow.emulator.http import start_emulator, stop_emulator

_logger = logging.getLogger("qflow.emulator")

TOKEN_ENV = "QFLOW_EMULATOR_TOKEN"


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str = "",
    backend: str = DEFAULT_BACKEND,
    time_scale: float = 1.0,
    offline: bool = False,
    faults: Faults | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; the first stdout line is the URL (for ``--port 0``)."""

    async def run() -> None:
        runner, url = await start_emulator(token, host, port, backend, time_scale, offline, faults)
        print(f"qflow emulator listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await stop_emulator(runner)

    asyncio.run(run())


def port_number(text: str) -> int:
    """argparse ``type`` of ``--port``: a bad port is a usage error, before anything binds."""
    try:
        port: int | None = int(text)
    except ValueError:
        port = None
    if port is None or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: give an integer from 0 to 65535 (0 picks a free port)"
        )
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qflow emulator",
        description="A QPU service emulator: one QPU, tasks run one at a time, REST API "
        "under /v1 with a mandatory bearer token.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=port_number, default=0, help="port; 0 picks a free one")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--token", help=f"bearer token (visible in ps: prefer --token-file or ${TOKEN_ENV})"
    )
    secret.add_argument("--token-file", help="file whose content is the bearer token")
    parser.add_argument(
        "--backend", choices=sorted(BACKENDS), default=DEFAULT_BACKEND, help="default backend"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="factor on every backend latency"
    )
    parser.add_argument(
        "--offline", action="store_true", help="start offline (POST /v1/admin/online)"
    )
    fault = parser.add_argument_group(
        "fault injection", "start misbehaving (change it later with POST /v1/admin/faults)"
    )
    fault.add_argument("--faults", choices=FAULT_MODES, default="none", help="fault mode")
    fault.add_argument(
        "--fault-count", type=int, default=None, help="requests affected (default: all)"
    )
    fault.add_argument("--fault-paths", help="only requests whose path starts with this")
    fault.add_argument("--fault-method", help="only requests with this HTTP method")
    fault.add_argument(
        "--fault-after",
        action="store_true",
        help="handle the request first (it takes effect), then lose or garble the answer",
    )
    return parser


def _token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            parser.error(f"cannot read --token-file {args.token_file}: {exc.strerror}")
    else:
        token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        parser.error(
            f"a token is required: --token-file FILE, --token TOKEN or ${TOKEN_ENV} "
            "(authentication is mandatory)"
        )
    return token


def main(argv: list[str] | None = None) -> int:
    """``qflow emulator``: serve a QPU emulator until SIGINT/SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    token = _token(parser, args)
    if not (math.isfinite(args.time_scale) and args.time_scale >= 0):
        parser.error("--time-scale must be a finite number >= 0")
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        faults = Faults(args.faults, args.fault_count, args.fault_paths, args.fault_method,
                        args.fault_after)  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    _logger.setLevel(logging.INFO)  # task events on stderr, even under qflow's WARNING root
    try:
        serve(args.host, args.port, token, args.backend, args.time_scale, args.offline, faults)
    except OSError as exc:
        print(f"qflow emulator: error: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0
