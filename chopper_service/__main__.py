"""``python -m chopper_service``: run the Chopper gRPC service until SIGINT or SIGTERM.

    python -m chopper_service [--bind ADDR]

The scorer's tokenizer is loaded before the server binds, so health reports SERVING only once a call can
be cut. The address defaults to ``CALLSENSE_CHOPPER_ADDR`` (``callsense.config``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import grpc.aio

from callsense import grpc_runtime
from callsense.config import ConfigError, load_config
from callsense.telemetry import setup_telemetry
from chopper_service.server import ChopperServicer, add_chopper

log = logging.getLogger("chopper_service")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chopper_service", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bind", help="host:port to listen on (default: CALLSENSE_CHOPPER_ADDR, 127.0.0.1:50052)"
    )
    return parser.parse_args(argv)


async def serve(servicer: ChopperServicer, bind: str) -> None:
    def add(server: grpc.aio.Server) -> list[str]:
        return add_chopper(server, servicer)

    await grpc_runtime.serve_forever(add, bind)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_telemetry("chopper")  # before any server or channel exists: it instruments grpc.aio
    try:
        bind = args.bind or load_config().chopper_addr
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        servicer = ChopperServicer()
    except Exception as exc:  # tokenizers raises a bare Exception for a missing or broken tokenizer.json
        log.error("cannot load the scorer's tokenizer: %s", exc)
        return 1
    try:
        asyncio.run(serve(servicer, bind))
    except RuntimeError as exc:  # e.g. the address is taken
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
