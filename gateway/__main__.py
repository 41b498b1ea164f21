"""``python -m gateway``: the HTTP/WebSocket API and the public gRPC API in one process and event loop.

    python -m gateway [--http ADDR] [--grpc ADDR]

Addresses default to ``CALLSENSE_GATEWAY_HTTP`` / ``CALLSENSE_GATEWAY_GRPC``; the database is
``DATABASE_URL`` (the supervisor passes it), else an embedded PostgreSQL. Both servers share one
``Gateway`` (one registry of live calls), so a call driven over gRPC can be watched over the WebSocket.
A call's report comes from the post-call worker (``CALLSENSE_POSTCALL_ADDR``, gateway/postcall_client.py),
which also delivers the webhooks and runs the nightly roll-ups: none of that runs in a gateway.

Shutdown on SIGINT/SIGTERM: the live calls are ended (reason ``shutdown``) while their clients are still
connected, so each client gets its summary; then the HTTP server stops and the gRPC server reports
NOT_SERVING and drains. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Iterator, Sequence

import uvicorn

from callsense import grpc_runtime
from callsense.config import Config, ConfigError, load_config, split_host_port
from callsense.telemetry import setup_telemetry
from callsense.tenants import TenantsConfig, load_tenants
from gateway.app import create_app
from gateway.calls.service import Gateway
from gateway.calls.settings import SessionSettings
from gateway.grpc_api import add_to_server
from gateway.heartbeat import LiveCallHeartbeat
from gateway.postcall_client import AfterCall

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGINT/SIGTERM for both servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--http", help="HTTP host:port (default: CALLSENSE_GATEWAY_HTTP, 127.0.0.1:8000)")
    parser.add_argument("--grpc", help="gRPC host:port (default: CALLSENSE_GATEWAY_GRPC, 127.0.0.1:50050)")
    return parser.parse_args(argv)


async def serve(config: Config, tenants: TenantsConfig | None = None) -> None:
    tenants = tenants or TenantsConfig()
    # After the call: the report from the post-call worker; the CRM push goes to the outbox as a call ends.
    after_call = AfterCall.for_config(config, tenants)
    settings = SessionSettings(badge_settings=tenants.badge_settings())
    try:
        gateway = await Gateway.open(config, settings=settings, after_call=after_call)
    except BaseException:
        await after_call.close()
        raise
    heartbeat = LiveCallHeartbeat(gateway.registry)  # the live calls this replica holds, for all replicas
    try:
        await heartbeat.start()
        grpc_server = await grpc_runtime.start_server(add_to_server(gateway), config.gateway_grpc)
        host, port = split_host_port(config.gateway_http)
        http = _Server(
            uvicorn.Config(
                create_app(config, gateway=gateway),
                host=host,
                port=port,
                log_config=None,  # keep the telemetry log format (call_id, trace_id on every line)
                lifespan="on",
                ws_max_size=16 * 1024 * 1024,
            )
        )
        loop = asyncio.get_running_loop()
        draining: set[asyncio.Task[None]] = set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _request_exit, gateway, http, draining)
        try:
            await http.serve()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await grpc_runtime.stop_server(grpc_server)
    finally:
        await heartbeat.stop()
        await gateway.close()  # ends the live calls: their reports still come from the worker
        await after_call.close()


def _request_exit(gateway: Gateway, http: uvicorn.Server, draining: set[asyncio.Task[None]]) -> None:
    if draining:
        http.should_exit = True  # a second signal: stop now
        return
    draining.add(asyncio.create_task(_drain_then_exit(gateway, http)))


async def _drain_then_exit(gateway: Gateway, http: uvicorn.Server) -> None:
    """End the live calls while their clients are still connected, so each gets its summary, then stop
    the servers (which close the connections)."""
    log.info("shutting down: ending the live calls")
    try:
        await gateway.drain()
    finally:
        http.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_telemetry("gateway")  # before any server or channel exists: it instruments grpc.aio
    try:
        config = load_config()
        overrides = {"gateway_http": args.http, "gateway_grpc": args.grpc}
        for value in overrides.values():
            if value:
                split_host_port(value)
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v})
        tenants = load_tenants()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(serve(config, tenants))
    except RuntimeError as exc:  # e.g. the gRPC address is taken
        log.error("%s", exc)
        return 1
    except Exception:  # e.g. the database is unreachable: say so once, with the cause, and exit non-zero
        log.exception("the gateway could not start")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
