"""The one way every callsense process serves and calls gRPC (asyncio, ``grpc.aio``).

Every server gets the same things, so that Envoy, Kubernetes and grpcurl can treat all services alike:
the standard ``grpc.health.v1`` health service (SERVING for "" and for each service name, flipped to
NOT_SERVING when shutdown begins so load balancers drain it first), server reflection, the same message
size limits and keepalive policy. Channels get keepalive settings the servers accept.

Usage in a service's ``__main__``::

    def add(server: grpc.aio.Server) -> list[str]:
        scorer_pb2_grpc.add_ScorerServicer_to_server(ScorerServicer(...), server)
        return [service_name(scorer_pb2, "Scorer")]

    asyncio.run(serve_forever(add, config.scorer_addr))

Telemetry (``callsense.telemetry.setup_telemetry``) must be set up before the server or any channel is
created: its instrumentation wraps ``grpc.aio.server`` and ``grpc.aio.insecure_channel``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callsense.grpc_decoding import UndecodableRequests

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_RECEIVE_BYTES = 4 * MiB
DEFAULT_MAX_SEND_BYTES = 16 * MiB
DEFAULT_GRACE_S = 5.0

AddServicers = Callable[[grpc.aio.Server], Sequence[str]]
"""Registers servicers on a server and returns their full service names ("callsense.v1.Scorer")."""

HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
MODEL_VERSION_TRAILER = "x-callsense-model-version"
"""Trailing metadata of a health check's answer: the model version the server serves (the scorer sets it),
which the gateway's readiness reports; the health protocol has no field for it."""

# Client pings every 30 s (also between calls, so a dead peer is noticed before the next call needs it);
# the server must allow at least that rate or it answers GOAWAY "too_many_pings".
_CLIENT_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
_SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
)


@dataclass(frozen=True)
class ServerInfo:
    """What start_server knows about a server it started, looked up with ``server_info(server)``."""

    address: str
    """The address actually bound, with the real port when ``bind`` asked for port 0."""
    port: int
    service_names: tuple[str, ...]
    health: health.aio.HealthServicer


# Keyed weakly so a stopped and dropped server does not linger here.
_servers: weakref.WeakKeyDictionary[grpc.aio.Server, ServerInfo] = weakref.WeakKeyDictionary()


def service_name(pb2_module: ModuleType, service: str) -> str:
    """Full name of a service declared in a generated ``*_pb2`` module, e.g. "callsense.v1.Scorer"."""
    name: str = pb2_module.DESCRIPTOR.services_by_name[service].full_name
    return name


def server_info(server: grpc.aio.Server) -> ServerInfo:
    """The bound address, port, service names and health servicer of a server from start_server."""
    return _servers[server]


def _server_options(max_receive_bytes: int, max_send_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.so_reuseport", 0),  # a second process on the same port must fail loudly, not share it
        *_SERVER_KEEPALIVE_OPTIONS,
    ]


async def start_server(
    add_servicers: AddServicers,
    bind: str,
    *,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    max_send_bytes: int = DEFAULT_MAX_SEND_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """Create, register, bind and start a grpc.aio server; return it started.

    ``bind`` is "host:port"; port 0 picks a free port (see ``server_info(server).port``). The server
    serves the services ``add_servicers`` registers, plus health and reflection. Raises RuntimeError when
    the address cannot be bound.
    """
    # A request that does not decode answers INVALID_ARGUMENT, not UNKNOWN (callsense/grpc_decoding.py).
    server = grpc.aio.server(
        options=_server_options(max_receive_bytes, max_send_bytes),
        interceptors=[UndecodableRequests(), *interceptors],
    )
    names = tuple(add_servicers(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(bind)
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind to address ...")
        raise RuntimeError(f"cannot bind gRPC server to {bind}: {exc}") from exc
    await server.start()
    address = f"{bind.rsplit(':', 1)[0]}:{port}"
    _servers[server] = ServerInfo(address=address, port=port, service_names=names, health=health_servicer)
    log.info("gRPC server on %s serving %s", address, ", ".join(names) or "(health only)")
    return server


async def stop_server(server: grpc.aio.Server, grace_s: float = DEFAULT_GRACE_S) -> None:
    """Graceful stop: report NOT_SERVING first (load balancers drain), then let calls finish for grace_s."""
    info = _servers.get(server)
    if info is not None:
        await info.health.enter_graceful_shutdown()
    await server.stop(grace_s)


async def serve_forever(
    add_servicers: AddServicers,
    bind: str,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    max_send_bytes: int = DEFAULT_MAX_SEND_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> None:
    """Start a server and run until SIGINT or SIGTERM, then stop gracefully and return.

    ``on_shutdown`` runs after the server has stopped (close pools, flush batchers). Returning normally
    on a signal lets atexit hooks, such as the telemetry exporters' flush, run.
    """
    server = await start_server(
        add_servicers,
        bind,
        max_receive_bytes=max_receive_bytes,
        max_send_bytes=max_send_bytes,
        interceptors=interceptors,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        stopped = asyncio.ensure_future(server.wait_for_termination())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        log.info("shutting down gRPC server on %s (grace %.1f s)", server_info(server).address, grace_s)
        await stop_server(server, grace_s)
        await stopped
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if on_shutdown is not None:
            await on_shutdown()


def channel_options(
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES, max_send_bytes: int = DEFAULT_MAX_RECEIVE_BYTES
) -> list[tuple[str, Any]]:
    """Options of every callsense client channel: keepalive the servers accept, message size limits.

    The send limit defaults to what our servers accept, so an oversized message fails locally with a clear
    RESOURCE_EXHAUSTED instead of on the far side.
    """
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
        *_CLIENT_KEEPALIVE_OPTIONS,
    ]


def insecure_channel(
    target: str,
    *,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    max_send_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    authority: str | None = None,
) -> grpc.aio.Channel:
    """A plaintext grpc.aio channel to ``target`` ("host:port" or "dns:///name:port") with keepalive.

    ``authority`` replaces the HTTP/2 ``:authority`` the peer sees: Envoy routes internal calls by it.
    Looked up through ``grpc.aio`` at call time so telemetry's client instrumentation applies. Close it
    with ``await channel.close()`` (or ``async with``).
    """
    options = channel_options(max_receive_bytes, max_send_bytes)
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.aio.insecure_channel(target, options=options, interceptors=list(interceptors) or None)


def service_channel(address: str, service: str, mesh_proxy: str | None = None) -> grpc.aio.Channel:
    """A channel to one of the mesh's services: straight to ``address``, or through the mesh proxy
    (Envoy) naming ``service`` as the authority, so Envoy balances across the service's replicas."""
    if mesh_proxy:
        return insecure_channel(mesh_proxy, authority=service)
    return insecure_channel(address)


async def wait_for_serving(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 10.0) -> None:
    """Wait until the peer's health service reports ``service`` SERVING; raise TimeoutError otherwise.

    For start-up ordering (the gateway waits for the scorer) and for tests.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"{service or 'server'} not SERVING within {timeout_s} s")
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=min(remaining, 1.0)
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        await asyncio.sleep(min(0.1, max(remaining, 0.0)))
