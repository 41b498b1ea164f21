"""Real mesh parts for the gateway tests: embedded PostgreSQL, chopper, scorer, the post-call worker and (for
audio calls, only when a test asks for it) the ASR service as subprocesses, and a gateway (HTTP on uvicorn +
public gRPC) running in the test's event loop.

The fixtures are registered once for the whole run (``pytest_plugins`` in tests/conftest.py), so each
process starts once per session, not once per module that uses it; test modules import only the types.
The scorer serves the shipped model, or the ONNX file named by CALLSENSE_TEST_SCORER_MODEL; without
either the mesh tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
import pytest
import pytest_asyncio
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from callsense import grpc_runtime
from callsense.config import Config
from callsense.database import EmbeddedPostgres, default_data_dir, start_embedded_postgres
from callsense.tenants import TenantsConfig
from gateway.__main__ import _Server
from gateway.app import create_app
from gateway.auth.credentials import Role
from gateway.calls.service import Gateway
from gateway.calls.settings import SessionSettings
from gateway.grpc_api import add_to_server
from gateway.postcall_client import AfterCall
from tests.support.auth import TEST_TENANT, bearer, keyed_channel, make_key
from tools.ports import free_port

__all__ = [
    "MeshServices",
    "asr_addr",
    "audio_gateway",
    "RunningGateway",
    "gateway_db_url",
    "gateway_pg",
    "mesh_services",
    "postcall_addr",
    "running_gateway",
]

ROOT = Path(__file__).resolve().parents[2]
SCORER_MODEL_ENV = "CALLSENSE_TEST_SCORER_MODEL"
READY_TIMEOUT_S = 120.0  # the scorer loads and warms its model first; the test box is often busy


# --------------------------------------------------------------------------------------------- database


@pytest.fixture(scope="session")
def gateway_pg() -> Iterator[EmbeddedPostgres]:
    # The test data dir (not the one of `callsense up`), shared with the store tests.
    data_dir = default_data_dir().with_name(default_data_dir().name + "-test")
    with start_embedded_postgres(data_dir, database="postgres") as pg:
        yield pg


@pytest.fixture(scope="session")
def gateway_db_url(gateway_pg: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database for this test session, dropped at its end."""
    yield from fresh_database(gateway_pg, "gateway_test")


def fresh_database(pg: EmbeddedPostgres, prefix: str = "test") -> Iterator[str]:
    """A new database's URL (migrated by whoever opens it first); dropped when the generator ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(name)
    yield url
    with psycopg.connect(pg.database_uri("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_db_url(gateway_pg: EmbeddedPostgres) -> Iterator[str]:
    """A database of this test's own, dropped at its end."""
    yield from fresh_database(gateway_pg)


# --------------------------------------------------------------------------------------------- services


@dataclass(frozen=True)
class MeshServices:
    chopper_addr: str
    scorer_addr: str
    postcall_addr: str
    """The session's post-call worker: a gateway's Config needs it, or its calls' reports are owed."""

    def config(self, **settings: Any) -> Config:
        """A gateway's Config that reaches these services; ``settings``: its other fields (or other
        addresses)."""
        services = {
            "chopper_addr": self.chopper_addr,
            "scorer_addr": self.scorer_addr,
            "postcall_addr": self.postcall_addr,
        }
        return Config(**(services | settings))


def _scorer_model() -> Path:
    from scorer_service.inference import DEFAULT_MODEL

    override = os.environ.get(SCORER_MODEL_ENV)
    path = Path(override) if override else DEFAULT_MODEL
    if not path.is_file():
        pytest.skip(f"SCORER MODEL ABSENT: {path} not found; ship a model or set {SCORER_MODEL_ENV}")
    return path


def _spawn(
    module: str, env_name: str, addr: str, args: list[str], log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({env_name: addr, "CALLSENSE_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a Ctrl-C of pytest does not reach it twice
        )


def _wait_serving(name: str, addr: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    pytest.fail(f"{name} not SERVING on {addr} within {READY_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def spawn_postcall(
    addr: str,
    database_url: str,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """A real post-call worker, ``python -m postcall --bind addr`` on ``database_url``; wait for it with
    ``_wait_serving``, stop it with ``_stop``. For tests that need one of their own (stopped and started
    again, or with tenants whose webhooks reach a test receiver)."""
    return _spawn(
        "postcall",
        "CALLSENSE_POSTCALL_ADDR",
        addr,
        ["--bind", addr, *(args or [])],
        log,
        {"DATABASE_URL": database_url, **(env or {})},
    )


def spawn_chopper(addr: str, log: Path) -> subprocess.Popen[bytes]:
    """A real chopper, ``python -m chopper_service`` on ``addr``; wait with ``_wait_serving``."""
    return _spawn("chopper_service", "CALLSENSE_CHOPPER_ADDR", addr, [], log)


def require_whisper() -> None:
    from asr_service.recognizer import default_model_dir

    if not (default_model_dir() / "model.bin").is_file():
        pytest.skip(f"WHISPER MODEL ABSENT: {default_model_dir()} has no model.bin")


def spawn_asr(
    addr: str, log: Path, *, recording_model: str | None = "live", log_level: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """A real ASR service (Whisper tiny.en), ``python -m asr_service --bind addr``; call
    ``require_whisper`` first, wait with ``_wait_serving``. Its recordings use the live model unless
    ``recording_model`` says otherwise (None: the service's default), so that the suite's expectations do
    not depend on whether the ``asr-base`` extra is installed."""
    args = ["--bind", addr] + (["--recording-model", recording_model] if recording_model else [])
    return _spawn("asr_service", "CALLSENSE_ASR_ADDR", addr, args, log, {"CALLSENSE_LOG_LEVEL": log_level})


def spawn_scorer(
    addr: str, log: Path, model: Path | None = None, *, fusion: bool = False
) -> subprocess.Popen[bytes]:
    """A real scorer with the shipped model (one thread), ``python -m scorer_service`` on ``addr``;
    ``fusion``: with the shipped tone fusion head (``--fusion``)."""
    model = model or _scorer_model()
    args = ["--model", str(model), "--threads", "1"] + (["--fusion"] if fusion else [])
    return _spawn("scorer_service", "CALLSENSE_SCORER_ADDR", addr, args, log)


@pytest.fixture(scope="session")
def postcall_addr(gateway_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real post-call worker, a `python -m postcall` subprocess on a free port and the session's
    database: it builds the report of every call the gateway fixtures end (and runs its outbox dispatcher,
    roll-up scheduler and owed-report sweep there, as in production)."""
    logs = tmp_path_factory.mktemp("postcall")
    addr = f"127.0.0.1:{free_port()}"
    worker = spawn_postcall(addr, gateway_db_url, logs / "postcall.log")
    try:
        _wait_serving("postcall", addr, worker, logs / "postcall.log")
        yield addr
    finally:
        _stop(worker)


@pytest.fixture(scope="session")
def mesh_services(tmp_path_factory: pytest.TempPathFactory, postcall_addr: str) -> Iterator[MeshServices]:
    """The real chopper and scorer, each a `python -m` subprocess on a free port, and the post-call worker."""
    model = _scorer_model()
    logs = tmp_path_factory.mktemp("mesh")
    chopper_addr = f"127.0.0.1:{free_port()}"
    scorer_addr = f"127.0.0.1:{free_port()}"
    chopper = spawn_chopper(chopper_addr, logs / "chopper.log")
    scorer = spawn_scorer(scorer_addr, logs / "scorer.log", model)
    try:
        _wait_serving("chopper", chopper_addr, chopper, logs / "chopper.log")
        _wait_serving("scorer", scorer_addr, scorer, logs / "scorer.log")
        yield MeshServices(chopper_addr, scorer_addr, postcall_addr)
    finally:
        _stop(chopper)
        _stop(scorer)


@pytest.fixture(scope="session")
def asr_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real ASR service (Whisper tiny.en), a `python -m asr_service` subprocess on a free port."""
    require_whisper()
    logs = tmp_path_factory.mktemp("asr")
    addr = f"127.0.0.1:{free_port()}"
    asr = spawn_asr(addr, logs / "asr.log")
    try:
        _wait_serving("asr", addr, asr, logs / "asr.log")
        yield addr
    finally:
        _stop(asr)


@pytest.fixture(scope="session")
def tone_scorer_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real scorer, started with the shipped tone fusion head (``--fusion``: tone is opt-in)."""
    logs = tmp_path_factory.mktemp("tone-scorer")
    addr = f"127.0.0.1:{free_port()}"
    scorer = spawn_scorer(addr, logs / "scorer.log", fusion=True)
    try:
        _wait_serving("scorer", addr, scorer, logs / "scorer.log")
        yield addr
    finally:
        _stop(scorer)


# --------------------------------------------------------------------------------------------- gateway


@dataclass(frozen=True)
class RunningGateway:
    gateway: Gateway
    http_url: str
    ws_url: str
    grpc_target: str
    key: str
    """A service key (of tenant "acme", tests.support.auth.TEST_TENANT, unless the fixture says), in the
    gateway's database."""

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    def channel(self) -> grpc.aio.Channel:
        """A channel to the gRPC API whose calls carry ``key``."""
        return keyed_channel(self.grpc_target, self.key)

    async def make_key(self, tenant: str = TEST_TENANT, role: Role = Role.SERVICE, **who: str) -> str:
        return await make_key(self.gateway.authenticator.keys, tenant, role, **who)


@pytest_asyncio.fixture
async def running_gateway(mesh_services: MeshServices, gateway_db_url: str) -> AsyncIterator[RunningGateway]:
    """A gateway in this test's loop: uvicorn on a free port, the gRPC API on another, one Gateway."""
    config = mesh_services.config(database_url=gateway_db_url)
    async with _serve_gateway(config) as running:
        yield running


@pytest_asyncio.fixture
async def audio_gateway(
    mesh_services: MeshServices, asr_addr: str, gateway_db_url: str
) -> AsyncIterator[RunningGateway]:
    """Like running_gateway, with the real ASR service behind it (audio calls)."""
    config = mesh_services.config(asr_addr=asr_addr, database_url=gateway_db_url)
    async with _serve_gateway(config) as running:
        yield running


@pytest_asyncio.fixture
async def tone_audio_gateway(
    mesh_services: MeshServices, asr_addr: str, tone_scorer_addr: str, gateway_db_url: str
) -> AsyncIterator[RunningGateway]:
    """Like audio_gateway, its scorer fusing the voice's tone with the words."""
    config = mesh_services.config(
        asr_addr=asr_addr, scorer_addr=tone_scorer_addr, database_url=gateway_db_url
    )
    async with _serve_gateway(config) as running:
        yield running


@contextlib.asynccontextmanager
async def _serve_gateway(
    config: Config,
    settings: SessionSettings | None = None,
    after_call: AfterCall | None = None,
    *,
    tenant: str = TEST_TENANT,
    tenants: TenantsConfig | None = None,
) -> AsyncIterator[RunningGateway]:
    """A gateway in this loop; its calls' reports from the worker at ``config.postcall_addr`` (with
    ``tenants``' settings) unless ``after_call`` is given; ``tenant``: the tenant of its key."""
    settings = settings or SessionSettings(grace_s=0.5, finish_timeout_s=30.0)
    own_after_call = after_call is None
    after_call = after_call or AfterCall.for_config(config, tenants)  # the worker at config.postcall_addr
    gateway = await Gateway.open(config, settings=settings, after_call=after_call)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    http = _Server(uvicorn.Config(create_app(config, gateway=gateway), log_config=None, lifespan="on"))
    serving = asyncio.create_task(http.serve(sockets=[sock]))
    grpc_server = await grpc_runtime.start_server(add_to_server(gateway), "127.0.0.1:0")
    try:
        while not http.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        yield RunningGateway(
            gateway,
            http_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/v1/sentiment/stream",
            grpc_target=f"127.0.0.1:{grpc_runtime.server_info(grpc_server).port}",
            key=await make_key(gateway.authenticator.keys, tenant),
        )
    finally:
        http.should_exit = True
        await serving
        await grpc_runtime.stop_server(grpc_server, 0.5)
        await gateway.close()
        if own_after_call:
            await after_call.close()
        sock.close()
