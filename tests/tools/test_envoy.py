"""The Envoy bootstrap: schema, Envoy's own validation, the checked-in file, and a real Envoy proxying
HTTP, WebSocket, gRPC and gRPC-Web to tiny local backends (started on free ports)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response

from tools.envoy_config import DEFAULT_PATH, MeshLayout, build, check, render
from tools.ports import free_port
from tools.supervisor import Supervisor, envoy_binary, envoy_shm_files, envoy_spec

ENVOY_ROUTE_TIMEOUT_DEFAULT_S = 15.0
"""Envoy ends a route's response this long after the request ends unless the route says otherwise."""


def live(test: Callable[..., Any]) -> Callable[..., Any]:
    """A test against the module's real Envoy (one event loop for the module, as the fixture has)."""
    return pytest.mark.slow(pytest.mark.asyncio(loop_scope="module")(test))


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _virtual_hosts(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {host["name"]: host for host in hcm["route_config"]["virtual_hosts"]}


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The public routes (the catch-all virtual host)."""
    return _virtual_hosts(config)["callsense"]["routes"]


def test_internal_callers_reach_a_service_by_authority() -> None:
    hosts = _virtual_hosts(build(MeshLayout()))
    for service in ("chopper", "scorer", "asr", "postcall"):
        host = hosts[service]
        assert host["domains"] == [service, f"{service}:*"]
        # Every path, health checks included, goes to the service named by the authority.
        assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in host["routes"]] == [("/", service)]


# --- the config itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        MeshLayout(),
        # Service names (STRICT_DNS), several replicas and tracing: the shape of a cluster deployment.
        MeshLayout(
            scorer=["scorer-0:50053", "scorer-1:50053"],
            gateway_http=["gateway:8000"],
            otlp_endpoint="http://otel-collector:4317",
        ),
    ],
    ids=["default", "cluster"],
)
def test_rendered_config_passes_envoy_validation(layout: MeshLayout, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render(layout))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Deprecated field" not in output, output


def test_checked_in_config_is_current() -> None:
    assert DEFAULT_PATH.read_text() == render(MeshLayout()), (
        "envoy/envoy.yaml is stale: run `python -m tools.envoy_config`"
    )


def test_scorer_replicas_become_endpoints() -> None:
    layout = MeshLayout(scorer=["10.0.0.1:50053", "10.0.0.2:50053", "10.0.0.3:50053"])
    bootstrap = check(build(layout))  # the typed envoy-data-plane Bootstrap
    assert bootstrap.static_resources is not None
    scorer = next(c for c in bootstrap.static_resources.clusters if c.name == "scorer")
    assert scorer.load_assignment is not None
    hosts = []
    for lb_endpoint in scorer.load_assignment.endpoints[0].lb_endpoints:
        address = lb_endpoint.endpoint.address.socket_address  # type: ignore[union-attr]  # set above
        hosts.append(address.address)  # type: ignore[union-attr]
    assert hosts == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_check_rejects_what_envoy_would_reject() -> None:
    config = build(MeshLayout())
    config["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
    with pytest.raises(ValueError, match="lb_polcy"):
        check(config)


def test_routes_clusters_and_timeouts() -> None:
    config = build(MeshLayout())
    routes = {r["match"]["prefix"]: r["route"] for r in _routes(config)}
    assert routes["/callsense.v1.Sentiment/"]["cluster"] == "gateway_grpc"
    assert routes["/callsense.v1.Scorer/"]["cluster"] == "scorer"
    assert routes["/callsense.v1.PostCall/"]["cluster"] == "postcall"
    assert routes["/grpc.health.v1.Health/"]["cluster"] == "gateway_grpc"
    assert list(routes)[-1] == "/" and routes["/"]["cluster"] == "gateway_http"
    assert all(r["timeout"] == "0s" for r in routes.values())
    assert routes["/"]["hash_policy"][0] == {"header": {"header_name": "x-call-id"}}

    clusters = _clusters(config)
    assert clusters["gateway_http"]["lb_policy"] == "RING_HASH"
    assert "http_health_check" in clusters["gateway_http"]["health_checks"][0]
    for name in ("gateway_grpc", "asr", "chopper", "scorer", "postcall"):
        assert "typed_extension_protocol_options" in clusters[name], name
        assert "grpc_health_check" in clusters[name]["health_checks"][0], name
    assert "tracing" not in str(config)


def test_tracing_exports_to_the_collector() -> None:
    config = build(MeshLayout(otlp_endpoint="http://127.0.0.1:4317"))
    collector = _clusters(config)["opentelemetry_collector"]
    address = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 4317}
    assert "envoy.tracers.opentelemetry" in str(config)


# --- a real Envoy ----------------------------------------------------------------------------------


def _http_backend(name: str, seen: list[Request]) -> Callable[[ServerConnection, Request], Response | None]:
    """Plain HTTP answers for non-WebSocket requests (health checks, REST); None lets a WebSocket in."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen.append(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return connection.respond(200, f"{name} {request.path}\n")

    return process_request


async def _echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        text = message if isinstance(message, str) else message.decode()
        await websocket.send(f"echo: {text}")


def _grpc_ping(service: str, answer: bytes) -> grpc.GenericRpcHandler:
    """A raw-bytes unary method ``/{service}/Ping`` that names the backend that answered."""

    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    return grpc.method_handlers_generic_handler(service, {"Ping": grpc.unary_unary_rpc_method_handler(ping)})


def _otlp_collector(spans: list[Any]) -> grpc.GenericRpcHandler:
    """A stand-in OpenTelemetry collector: keeps every span Envoy exports over OTLP/gRPC."""

    async def export(
        request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans.extend(span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    method = grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": method}
    )


@dataclass
class Mesh:
    port: int
    grpc_health: health.aio.HealthServicer
    http_requests: list[Request]
    """Every request the gateway_http replicas saw, headers included."""
    exported_spans: list[Any]


async def _start_grpc_server(handlers: list[grpc.GenericRpcHandler]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with contextlib.AsyncExitStack() as stack:
        http_ports = []
        http_requests: list[Request] = []
        for i in range(2):  # two gateway replicas, to see a call pinned to one of them
            backend = _http_backend(f"gateway-{i}", http_requests)
            server = await ws_serve(_echo, "127.0.0.1", 0, process_request=backend, ping_interval=None)
            stack.push_async_callback(_close_ws_server, server)
            http_ports.append(server.sockets[0].getsockname()[1])

        gateway_health = health.aio.HealthServicer()
        grpc_addrs: dict[str, list[str]] = {}
        services = {
            "gateway_grpc": "Sentiment",
            "asr": "Asr",
            "chopper": "Chopper",
            "scorer": "Scorer",
            "postcall": "PostCall",
        }
        for cluster, service in services.items():
            servicer = gateway_health if cluster == "gateway_grpc" else health.aio.HealthServicer()
            ping = _grpc_ping(f"callsense.v1.{service}", cluster.encode())
            grpc_server, port = await _start_grpc_server([ping])
            health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
            stack.push_async_callback(grpc_server.stop, None)
            grpc_addrs[cluster] = [f"127.0.0.1:{port}"]

        exported_spans: list[Any] = []
        collector, collector_port = await _start_grpc_server([_otlp_collector(exported_spans)])
        stack.push_async_callback(collector.stop, None)

        layout = MeshLayout(
            listener_host="127.0.0.1",
            listener_port=free_port(),
            admin_port=free_port(),
            gateway_http=[f"127.0.0.1:{port}" for port in http_ports],
            gateway_grpc=grpc_addrs["gateway_grpc"],
            asr=grpc_addrs["asr"],
            chopper=grpc_addrs["chopper"],
            scorer=grpc_addrs["scorer"],
            postcall=grpc_addrs["postcall"],
            otlp_endpoint=f"http://127.0.0.1:{collector_port}",
            access_log=False,
        )
        config = tmp_path_factory.mktemp("envoy") / "envoy.yaml"
        config.write_text(render(layout))
        shm_before = envoy_shm_files()
        supervisor = Supervisor(
            [envoy_spec("envoy", config, admin_port=layout.admin_port, concurrency=1)], out=io.StringIO()
        )
        await stack.enter_async_context(supervisor)
        yield Mesh(layout.listener_port, gateway_health, http_requests, exported_spans)
    assert envoy_shm_files() <= shm_before, "Envoy left hot-restart shared memory behind"


async def _close_ws_server(server: Server) -> None:
    server.close()
    await server.wait_closed()


@live
async def test_plain_http_and_call_pinning(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        reply = await client.get("/docs")
        assert reply.status_code == 200
        assert reply.text.endswith(" /docs\n")
        assert reply.headers["x-request-id"]  # Envoy gives every request an id and says which

        # One call id always reaches the same gateway replica; many call ids reach both.
        replicas: dict[str, str] = {}
        for i in range(20):
            call_id = f"call-{i}"
            seen = {
                (await client.get("/v1/calls", headers={"x-call-id": call_id})).text.split()[0]
                for _ in range(3)
            }
            assert len(seen) == 1, f"{call_id} was served by {seen}"
            replicas[call_id] = seen.pop()
        assert set(replicas.values()) == {"gateway-0", "gateway-1"}


@live
async def test_grpc_routes_reach_their_services(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
        for service, cluster in [
            ("Sentiment", "gateway_grpc"),
            ("Asr", "asr"),
            ("Chopper", "chopper"),
            ("Scorer", "scorer"),
            ("PostCall", "postcall"),
        ]:
            ping = channel.unary_unary(f"/callsense.v1.{service}/Ping")
            assert await ping(b"", timeout=5) == cluster.encode()
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@live
async def test_grpc_web_and_cors(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        preflight = await client.options(
            "/callsense.v1.Sentiment/Ping",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-grpc-web",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"

        reply = await client.post(
            "/callsense.v1.Sentiment/Ping",
            content=b"\x00" + struct.pack(">I", 0),  # one empty, uncompressed gRPC-Web message
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert reply.status_code == 200
    body = reply.content
    flags, length = body[0], struct.unpack(">I", body[1:5])[0]
    assert flags == 0 and body[5 : 5 + length] == b"gateway_grpc"
    assert body[5 + length] == 0x80 and b"grpc-status:0" in body[5 + length :]  # the trailer frame


@live
async def test_long_streams_outlive_default_timeouts(mesh: Mesh) -> None:
    """A silent WebSocket and a quiet gRPC server stream both outlive Envoy's default route timeout."""
    hold_s = ENVOY_ROUTE_TIMEOUT_DEFAULT_S + 1.5
    await mesh.grpc_health.set("calls", health_pb2.HealthCheckResponse.SERVING)

    async def websocket() -> None:
        url = f"ws://127.0.0.1:{mesh.port}/v1/sentiment/stream?call_id=long-1"
        async with ws_connect(url, ping_interval=None, open_timeout=5) as ws:
            await ws.send("start")
            assert await ws.recv() == "echo: start"
            await asyncio.sleep(hold_s)  # not a byte either way
            await ws.send("still here")
            assert await ws.recv() == "echo: still here"

    async def grpc_watch() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="calls"))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(hold_s)
            await mesh.grpc_health.set("calls", health_pb2.HealthCheckResponse.NOT_SERVING)
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()

    async with asyncio.timeout(hold_s + 15):
        await asyncio.gather(websocket(), grpc_watch())


@live
async def test_envoy_spans_join_the_callers_trace(mesh: Mesh) -> None:
    trace_id, client_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{trace_id}-{client_span}-01", "x-call-id": "traced-call"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        # Envoy exports once it holds 5 spans (or every 5 s): five requests make it export at once.
        for i in range(5):
            assert (await client.get(f"/traced/{i}", headers=headers)).status_code == 200

    async with asyncio.timeout(15):
        while len(ours := [s for s in mesh.exported_spans if s.trace_id.hex() == trace_id]) < 5:
            await asyncio.sleep(0.1)
    for span in ours:
        assert span.parent_span_id.hex() == client_span
        assert {a.key: a.value.string_value for a in span.attributes}["call.id"] == "traced-call"

    # The gateway gets a traceparent whose parent is an Envoy span: its own spans join the same trace.
    upstream = [r for r in mesh.http_requests if r.path.startswith("/traced/")]
    parents = {r.headers["traceparent"].split("-")[2] for r in upstream}
    assert {r.headers["traceparent"].split("-")[1] for r in upstream} == {trace_id}
    assert parents == {s.span_id.hex() for s in ours}
    assert all(r.headers["x-call-id"] == "traced-call" and r.headers["x-request-id"] for r in upstream)
