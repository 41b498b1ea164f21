"""End to end: `callsense up` as a person runs it, every process real, every request through Envoy.

`python -m tools.cli up` starts the embedded PostgreSQL, Envoy, the chopper, the scorer(s) and the
gateway on free ports (the CALLSENSE_* variables), with OTEL_EXPORTER_OTLP_ENDPOINT pointing at an
in-test OTLP collector, so the services and Envoy export their spans here. Then a short sales call that
turns sour at the price goes through the WebSocket, through gRPC `Sentiment.StreamCall` and, after the
fact, through gRPC-Web `AnalyzeBatch`; each is scored utterance by utterance, stored in `nlp_events`,
served by `GET /v1/calls/{id}` and `GetCall`, and leaves ONE trace that spans Envoy, the gateway, the
chopper and the scorer with `call.id` on every span. Ctrl-C (SIGINT) then stops everything: no process
and no Envoy shared-memory file is left behind. A lighter second mesh runs two scorer replicas and shows
that Envoy gives both of them calls.

Failures name the process and end with the tail of `callsense up`'s output (every child's lines are
prefixed with its name there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import psutil
import psycopg
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from callsense.database import start_embedded_postgres
from callsense.v1 import audio_pb2, scorer_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.auth.credentials import mint_key
from scorer_service.inference import DEFAULT_MODEL
from tests.support.audio import require_speech_tools
from tests.support.auth import bearer, keyed_channel
from tests.support.otlp_collector import ExportedSpan, OtlpCollector
from tools.ports import free_port, free_port_run, free_ports
from tools.supervisor import envoy_shm_files
from tools.up import SCORER_PORT_STEP

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
"""Cold start: initdb of the embedded database, the scorer loading its model, all on a busy 2-core box."""
CALL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0
"""The supervisor gives each child 10 s (Envoy 5 s) between SIGTERM and SIGKILL, layer by layer."""
TRACE_TIMEOUT_S = 25.0
"""Envoy's OpenTelemetry tracer exports every 5 s (or once it holds 5 spans); the services every 200 ms."""
MESH_SERVICES = {"envoy", "gateway", "chopper", "scorer", "postcall"}  # the report crosses the mesh too

# A short sales call that turns sour at the price: (channel, text, sour?). One sentence per utterance:
# the chopper makes every sentence its own utterance, and the test expects one score per message.
SALES_CALL: tuple[tuple[str, str, bool], ...] = (
    ("agent", "Hi, thanks for making time for me today.", False),
    ("customer", "Sure, happy to chat, the demo last week was great.", False),
    ("agent", "The premium plan comes to five thousand dollars a month.", False),
    ("customer", "That is way too expensive and I am really disappointed.", True),
    ("customer", "Honestly this feels like a waste of my time.", True),
)
_GRPC_CHANNEL: dict[str, audio_pb2.ChannelRole] = {
    "customer": audio_pb2.CUSTOMER,
    "agent": audio_pb2.AGENT,
    "mixed": audio_pb2.MIXED,
}


def _utterance_times(index: int) -> tuple[int, int]:
    return index * 3_000, index * 3_000 + 2_500


# --------------------------------------------------------------------------------------------- ports


# --------------------------------------------------------------------------------------------- the mesh


@dataclass
class CallResult:
    """What a test learnt about one call, for the tests that check it afterwards."""

    call_id: str
    texts: list[str]
    scores: list[float]
    labels: list[str]


@dataclass
class RunningMesh:
    """`callsense up` running as a child of the test, and where to reach it."""

    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    envoy_port: int
    """Envoy's public listener: every request of the tests goes through it."""
    envoy_admin_port: int
    envoy_internal_port: int
    """Envoy's internal listener: the gateway's mesh proxy (the services by authority), /metrics."""
    collector: OtlpCollector
    shm_before: set[Path]
    key: str
    """The mesh's bootstrap admin key (tenant "e2e"), registered by the gateway into the fresh database."""
    descendants: list[psutil.Process] = field(default_factory=list)
    postmaster_pid: int | None = None
    calls: dict[str, CallResult] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.envoy_port}/v1/sentiment/stream"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.envoy_port}"

    def output(self, lines: int = 80) -> str:
        """The tail of `callsense up`'s output (all children, prefixed by name), for failure messages."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text[-lines:])

    async def events_until_summary(self, ws: ClientConnection, what: str) -> list[dict[str, Any]]:
        """A call's WebSocket events up to its summary; a failure that says what the mesh was doing."""
        events: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                while not events or events[-1]["type"] != "summary":
                    events.append(json.loads(await ws.recv()))
        except TimeoutError:
            pytest.fail(self.diagnose(f"{what}: no summary within {CALL_TIMEOUT_S:g} s; got {events}"))
        return events

    def diagnose(self, what: str) -> str:
        started = re.findall(r"^callsense \| starting (\S+):", self.log.read_text(errors="replace"), re.M)
        ready = re.findall(r"^callsense \| (\S+) ready in", self.log.read_text(errors="replace"), re.M)
        waiting = [name for name in started if name not in ready]
        return (
            f"{what}\n  processes started but not ready: {waiting or 'none'}; ready: {ready or 'none'}\n"
            f"  `callsense up` exit code: {self.process.poll()}\n"
            f"  last output of `callsense up` ({self.log}):\n" + self.output()
        )

    def call(self, kind: str) -> CallResult:
        if kind not in self.calls:
            pytest.fail(
                f"the {kind} call did not complete in an earlier test of this module: see that failure"
            )
        return self.calls[kind]


E2E_KEY = mint_key().token
"""One key for every mesh of the run: meshes that share a data directory share its database (and the key
the first one registered)."""
E2E_TWILIO_TOKEN = secrets.token_urlsafe(24)
"""The auth token of tenant e2e's (pretend) Twilio account: the mesh accepts a Twilio Media Stream of e2e
only as signed with it (tests.support.twilio.twilio_signed)."""
E2E_TWILIO_TOKEN_ENV = "E2E_TWILIO_AUTH_TOKEN"


def _mesh_env(
    data_dir: Path, collector: OtlpCollector, scorer_port: int
) -> tuple[dict[str, str], int, int, int]:
    # Nothing of the developer's own mesh settings may leak in: the test owns every port and path.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CALLSENSE_", "OTEL_")) and k != "DATABASE_URL"
    }
    envoy_port, admin_port, internal_port = free_ports(3)
    # Tenant e2e (the bootstrap key's) takes Twilio streams signed with its token, read from the environment.
    tenants_file = data_dir / "tenants.toml"
    tenants_file.write_text(f'[tenants.e2e]\ntwilio_auth_token_env = "{E2E_TWILIO_TOKEN_ENV}"\n')
    env.update(
        CALLSENSE_ENVOY_PORT=str(envoy_port),
        CALLSENSE_ENVOY_ADMIN_PORT=str(admin_port),
        CALLSENSE_ENVOY_INTERNAL_PORT=str(internal_port),
        CALLSENSE_GATEWAY_HTTP=f"127.0.0.1:{free_port()}",
        CALLSENSE_GATEWAY_GRPC=f"127.0.0.1:{free_port()}",
        CALLSENSE_CHOPPER_ADDR=f"127.0.0.1:{free_port()}",
        CALLSENSE_SCORER_ADDR=f"127.0.0.1:{scorer_port}",
        CALLSENSE_ASR_ADDR=f"127.0.0.1:{free_port()}",
        CALLSENSE_POSTCALL_ADDR=f"127.0.0.1:{free_port()}",
        CALLSENSE_DATA_DIR=str(data_dir),  # absolute: the embedded database lives in data_dir/postgres
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",  # services flush spans every 200 ms instead of 5 s
        PYTHONUNBUFFERED="1",
        # The fresh database's first key: what a deployment hands `callsense up` (a secret, a CI variable).
        CALLSENSE_BOOTSTRAP_KEY=E2E_KEY,
        CALLSENSE_BOOTSTRAP_TENANT="e2e",
        CALLSENSE_TENANTS_FILE=str(tenants_file),
        **{E2E_TWILIO_TOKEN_ENV: E2E_TWILIO_TOKEN},
    )
    return env, envoy_port, admin_port, internal_port


async def start_mesh(
    data_dir: Path, collector: OtlpCollector, log: Path, *, replicas: int = 1
) -> RunningMesh:
    """Start `callsense up` and wait until GET /readyz through Envoy answers 200."""
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"SCORER MODEL ABSENT: {DEFAULT_MODEL} not found; ship a model first")
    data_dir.mkdir(parents=True, exist_ok=True)
    env, envoy_port, admin_port, internal_port = _mesh_env(
        data_dir, collector, free_port_run(replicas, SCORER_PORT_STEP)
    )
    shm_before = envoy_shm_files()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "up", "--scorer-replicas", str(replicas)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C of pytest reaches it only through the fixture's clean-up, once.
            start_new_session=True,
        )
    mesh = RunningMesh(
        process,
        log,
        data_dir,
        envoy_port,
        admin_port,
        internal_port,
        collector,
        shm_before,
        env["CALLSENSE_BOOTSTRAP_KEY"],
    )
    try:
        await _wait_ready(mesh)
    except BaseException:
        _force_stop(mesh)
        raise
    mesh.descendants = psutil.Process(process.pid).children(recursive=True)
    mesh.postmaster_pid = _postmaster_pid(data_dir / "postgres")
    return mesh


async def _wait_ready(mesh: RunningMesh) -> None:
    url = f"{mesh.base_url}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    async with httpx.AsyncClient(timeout=3.0) as http:
        while time.monotonic() < deadline:
            if mesh.process.poll() is not None:
                pytest.fail(mesh.diagnose(f"`callsense up` exited before the mesh was ready ({url}: {last})"))
            try:
                reply = await http.get(url)
                if reply.status_code == 200:
                    return
                last = f"HTTP {reply.status_code} {reply.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.3)
    pytest.fail(mesh.diagnose(f"GET {url} through Envoy not 200 after {READY_TIMEOUT_S:g} s: {last}"))


def _postmaster_pid(pg_data: Path) -> int | None:
    try:
        return int((pg_data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _left_over(mesh: RunningMesh) -> list[str]:
    """Processes of the mesh still running (a zombie waiting for init to reap it runs nothing)."""
    left = []
    for proc in mesh.descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:160]}")
    if mesh.postmaster_pid is not None and _running(mesh.postmaster_pid):
        left.append(f"pid {mesh.postmaster_pid}: the embedded PostgreSQL's postmaster")
    return left


async def stop_with_ctrl_c(mesh: RunningMesh) -> int:
    """SIGINT `callsense up`, as Ctrl-C in its terminal would; its exit code."""
    mesh.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while mesh.process.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(mesh.diagnose(f"`callsense up` still running {STOP_TIMEOUT_S:g} s after SIGINT"))
        await asyncio.sleep(0.1)
    return mesh.process.returncode


async def assert_stopped_cleanly(mesh: RunningMesh, code: int) -> None:
    assert code == 0, mesh.diagnose(f"`callsense up` exited with {code} after SIGINT, not 0")
    # Orphaned zombies are reaped by init a moment later; anything still running is a leak.
    deadline = time.monotonic() + 5.0
    while (left := _left_over(mesh)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not left, mesh.diagnose("processes left after `callsense up` stopped:\n  " + "\n  ".join(left))
    leaked = envoy_shm_files() - mesh.shm_before
    assert not leaked, f"Envoy left hot-restart shared memory behind: {sorted(map(str, leaked))}"


def _force_stop(mesh: RunningMesh) -> None:
    """Last resort in clean-up: kill whatever the mesh left running (never hides a failed stop test)."""
    if mesh.process.poll() is None:
        mesh.process.send_signal(signal.SIGINT)
        try:
            mesh.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mesh.process.pid, signal.SIGKILL)
            mesh.process.wait(5)
    for proc in mesh.descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    if mesh.postmaster_pid is not None and _running(mesh.postmaster_pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(mesh.postmaster_pid).terminate()


def mesh_data_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A data directory for `callsense up` (the e2e modules' ``data_dir`` fixtures); its database
    cluster (~40 MB; pytest keeps its last few temp dirs) is dropped at the end once nothing runs it."""
    path = tmp_path_factory.mktemp(name)
    yield path
    postmaster = _postmaster_pid(path / "postgres")
    if postmaster is None or not _running(postmaster):
        shutil.rmtree(path / "postgres", ignore_errors=True)


@contextlib.asynccontextmanager
async def speaking_mesh(data_dir: Path, log_name: str) -> AsyncIterator[RunningMesh]:
    """`callsense up` for the audio modules: skips loudly without espeak-ng or the Whisper model."""
    from asr_service.recognizer import default_model_dir

    require_speech_tools()
    if not (default_model_dir() / "model.bin").is_file():
        pytest.skip(f"WHISPER MODEL ABSENT: {default_model_dir()} has no model.bin")
    with OtlpCollector() as collector:
        running = await start_mesh(data_dir, collector, data_dir.parent / log_name)
        try:
            yield running
        finally:
            await asyncio.to_thread(_force_stop, running)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # One for both meshes of the module: the second finds the database initialised (a warm start).
    yield from mesh_data_dir(tmp_path_factory, "callsense-data")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(data_dir: Path) -> AsyncIterator[RunningMesh]:
    with OtlpCollector() as collector:
        running = await start_mesh(data_dir, collector, data_dir.parent / "up.log")
        try:
            yield running
        finally:
            await asyncio.to_thread(_force_stop, running)


# --------------------------------------------------------------------------------------------- database


def _query(mesh: RunningMesh, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows from the mesh's own database (attaching to the embedded server `callsense up` runs)."""
    # Attaching registers this process as a user of the server; stop() deregisters it without
    # stopping the server, which `callsense up` still holds (and stops itself on Ctrl-C).
    with start_embedded_postgres(mesh.data_dir / "postgres") as pg, psycopg.connect(pg.uri) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]  # sql is a test literal


# --------------------------------------------------------------------------------------------- WebSocket


async def _websocket_call(
    mesh: RunningMesh, call_id: str, lines: Sequence[tuple[str, str, bool]]
) -> list[dict[str, Any]]:
    """Drive one call over the WebSocket through Envoy; every server event up to the summary."""
    # x-call-id: Envoy pins the call to one gateway replica by it and tags its span with call.id.
    async with ws_connect(
        mesh.ws_url, additional_headers={**mesh.headers, "x-call-id": call_id}, open_timeout=10
    ) as ws:
        await ws.send(json.dumps({"type": "start", "call_id": call_id, "metadata": {"tenant": "e2e"}}))
        for index, (channel, text, _) in enumerate(lines):
            start_ms, end_ms = _utterance_times(index)
            await ws.send(
                json.dumps(
                    {
                        "type": "utterance",
                        "text": text,
                        "channel": channel,
                        "start_ms": start_ms,
                        "end_ms": end_ms,
                    }
                )
            )
        await ws.send(json.dumps({"type": "stop"}))
        return await mesh.events_until_summary(ws, f"WebSocket call {call_id}")


def _check_sour_call(call_id: str, texts: list[str], scores: list[float], labels: list[str]) -> None:
    """The call's scores follow its mood: every sour line scores below every line before the price."""
    sour = [s for s, (_, _, is_sour) in zip(scores, SALES_CALL, strict=True) if is_sour]
    sweet = [s for s, (_, _, is_sour) in zip(scores, SALES_CALL, strict=True) if not is_sour]
    table = "\n".join(f"  {lbl:8} {s:.3f}  {t}" for t, s, lbl in zip(texts, scores, labels, strict=True))
    assert max(sour) < min(sweet), f"call {call_id}: sour lines do not score lower:\n{table}"
    assert max(sour) < 0.3, f"call {call_id}: sour lines are not clearly negative:\n{table}"
    assert all(lbl == "negative" for lbl, (_, _, s) in zip(labels, SALES_CALL, strict=True) if s), table


async def test_websocket_call_through_envoy(mesh: RunningMesh) -> None:
    call_id = f"e2e-ws-{uuid.uuid4().hex[:10]}"
    events = await _websocket_call(mesh, call_id, SALES_CALL)

    errors = [e for e in events if e["type"] == "error"]
    assert not errors, mesh.diagnose(f"call {call_id} got error events: {errors}")
    assert events[0]["type"] == "started" and events[0]["call_id"] == call_id, events[0]
    scores = [e for e in events if e["type"] == "score"]
    assert [e["type"] for e in events] == ["started"] + ["score"] * len(SALES_CALL) + ["summary"], events
    assert [e["utterance_id"] for e in scores] == list(range(len(SALES_CALL))), "utterance ids out of order"
    assert [e["seq"] for e in events[1:]] == list(range(len(SALES_CALL) + 1)), "event seq out of order"
    assert [(e["channel"], e["text"]) for e in scores] == [(c, t) for c, t, _ in SALES_CALL]
    for e in scores:
        assert e["call_id"] == call_id and e["model_version"], e
        assert abs(e["p_negative"] + e["p_neutral"] + e["p_positive"] - 1.0) < 1e-3, e
    values = [e["score"] for e in scores]
    labels = [e["label"] for e in scores]
    _check_sour_call(call_id, [e["text"] for e in scores], values, labels)

    summary = events[-1]
    assert summary["status"] == "ended" and summary["reason"] == "hangup", summary
    assert summary["utterance_count"] == len(SALES_CALL), summary
    assert summary["min_sentiment"] == pytest.approx(min(values), abs=1e-6), summary
    mesh.calls["websocket"] = CallResult(call_id, [e["text"] for e in scores], values, labels)


async def test_websocket_call_is_in_nlp_events_and_get_call(mesh: RunningMesh) -> None:
    call = mesh.call("websocket")
    rows = await asyncio.to_thread(
        _query,
        mesh,
        "SELECT utterance_id, channel, text, label, score, start_ms, end_ms FROM nlp_events "
        "WHERE call_id = %s ORDER BY utterance_id",
        call.call_id,
    )
    assert [r[0] for r in rows] == list(range(len(SALES_CALL))), f"nlp_events rows of {call.call_id}: {rows}"
    assert [(r[1], r[2]) for r in rows] == [(c, t) for c, t, _ in SALES_CALL]
    assert [r[3] for r in rows] == call.labels
    assert [r[4] for r in rows] == pytest.approx(call.scores, abs=1e-6)
    assert [(r[5], r[6]) for r in rows] == [_utterance_times(i) for i in range(len(SALES_CALL))]
    (status, tenant), *_ = await asyncio.to_thread(
        _query, mesh, "SELECT status, tenant FROM calls WHERE call_id = %s", call.call_id
    )
    assert (status, tenant) == ("ended", "e2e")

    async with httpx.AsyncClient(base_url=mesh.base_url, headers=mesh.headers, timeout=10) as http:
        reply = await http.get(f"/v1/calls/{call.call_id}")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "ended" and body["metadata"]["tenant"] == "e2e", body
    assert [e["utterance_id"] for e in body["events"]] == list(range(len(SALES_CALL)))
    assert [e["score"] for e in body["events"]] == pytest.approx(call.scores, abs=1e-6)
    assert body["stats"]["utterance_count"] == len(SALES_CALL), body["stats"]
    assert body["summary"]["reason"] == "hangup", body["summary"]


# --------------------------------------------------------------------------------------------- gRPC


def _text_utterances() -> list[sentiment_pb2.TextUtterance]:
    utterances = []
    for index, (channel, text, _) in enumerate(SALES_CALL):
        start_ms, end_ms = _utterance_times(index)
        role = _GRPC_CHANNEL[channel]
        utterances.append(
            sentiment_pb2.TextUtterance(text=text, channel=role, start_ms=start_ms, end_ms=end_ms)
        )
    return utterances


def _stream_requests(call_id: str) -> Iterator[sentiment_pb2.StreamCallRequest]:
    metadata = audio_pb2.CallMetadata(tenant="e2e")
    yield sentiment_pb2.StreamCallRequest(
        call_id=call_id, start=audio_pb2.CallStart(call_id=call_id, metadata=metadata)
    )
    for utterance in _text_utterances():
        yield sentiment_pb2.StreamCallRequest(call_id=call_id, text=utterance)
    yield sentiment_pb2.StreamCallRequest(
        call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id, reason="hangup")
    )


async def test_grpc_stream_call_through_envoy(mesh: RunningMesh) -> None:
    call_id = f"e2e-grpc-{uuid.uuid4().hex[:10]}"

    async def requests() -> AsyncIterator[sentiment_pb2.StreamCallRequest]:
        for request in _stream_requests(call_id):
            yield request

    events: list[sentiment_pb2.CallEvent] = []
    async with keyed_channel(mesh.grpc_target, mesh.key) as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        stream = stub.StreamCall(requests(), metadata=(("x-call-id", call_id),), timeout=CALL_TIMEOUT_S)
        try:
            async for event in stream:
                events.append(event)
        except grpc.aio.AioRpcError as exc:
            pytest.fail(mesh.diagnose(f"StreamCall {call_id} failed: {exc.code().name} {exc.details()}"))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["score"] * len(SALES_CALL) + ["summary"], f"{kinds}: {events}"
    assert [e.seq for e in events] == list(range(len(SALES_CALL) + 1))
    scored = [e.score for e in events[:-1]]
    assert [s.utterance.utterance_id for s in scored] == list(range(len(SALES_CALL)))
    assert [s.utterance.text for s in scored] == [t for _, t, _ in SALES_CALL]
    values = [s.score.score for s in scored]
    labels = [scorer_pb2.SentimentLabel.Name(s.score.label).lower() for s in scored]
    _check_sour_call(call_id, [s.utterance.text for s in scored], values, labels)
    summary = events[-1].summary
    assert summary.utterance_count == len(SALES_CALL)
    assert summary.min_sentiment == pytest.approx(min(values), abs=1e-5)
    mesh.calls["grpc"] = CallResult(call_id, [s.utterance.text for s in scored], values, labels)


# --------------------------------------------------------------------------------------------- gRPC-Web


def _grpc_web_frame(message: Message) -> bytes:
    payload = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload  # flag 0: a data frame, uncompressed


def _grpc_web_decode(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The data frames and the trailer frame (flag 0x80: "key: value" lines) of a gRPC-Web body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flags, length = body[offset], struct.unpack(">I", body[offset + 1 : offset + 5])[0]
        frame = body[offset + 5 : offset + 5 + length]
        assert len(frame) == length, f"truncated gRPC-Web frame at {offset}: {body!r}"
        if flags & 0x80:
            for line in frame.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(frame)
        offset += 5 + length
    return messages, trailers


async def _grpc_web(mesh: RunningMesh, method: str, request: Message, **headers: str) -> bytes:
    """One unary call as a browser makes it: HTTP/1.1 POST through Envoy's grpc_web filter."""
    async with httpx.AsyncClient(
        base_url=mesh.base_url, headers=mesh.headers, timeout=CALL_TIMEOUT_S
    ) as http:
        reply = await http.post(
            f"/callsense.v1.Sentiment/{method}",
            content=_grpc_web_frame(request),
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **headers},
        )
    assert reply.status_code == 200, f"{method}: HTTP {reply.status_code} {reply.text[:300]}"
    assert reply.headers["content-type"].startswith("application/grpc-web"), reply.headers
    messages, trailers = _grpc_web_decode(reply.content)
    status = trailers.get("grpc-status", reply.headers.get("grpc-status"))
    message = trailers.get("grpc-message", reply.headers.get("grpc-message", ""))
    assert status == "0", mesh.diagnose(f"{method} over gRPC-Web: grpc-status {status} {message}")
    assert len(messages) == 1, f"{method}: {len(messages)} messages in a unary reply"
    return messages[0]


async def test_grpc_web_get_call_and_analyze_batch(mesh: RunningMesh) -> None:
    # The call streamed over gRPC, read back the way a browser would.
    streamed = mesh.call("grpc")
    record = sentiment_pb2.CallRecord.FromString(
        await _grpc_web(mesh, "GetCall", sentiment_pb2.GetCallRequest(call_id=streamed.call_id))
    )
    assert record.call_id == streamed.call_id and record.status == sentiment_pb2.COMPLETED, record
    assert [e.utterance.utterance_id for e in record.events] == list(range(len(SALES_CALL)))
    assert [e.score.score for e in record.events] == pytest.approx(streamed.scores, abs=1e-5)
    assert record.summary.utterance_count == len(SALES_CALL)

    # The same call after the fact, through the batch path (chopper and scorer behind Envoy again).
    call_id = f"e2e-batch-{uuid.uuid4().hex[:10]}"
    request = sentiment_pb2.AnalyzeBatchRequest(
        call_id=call_id, metadata=audio_pb2.CallMetadata(tenant="e2e"), utterances=_text_utterances()
    )
    reply = sentiment_pb2.AnalyzeBatchResponse.FromString(
        await _grpc_web(mesh, "AnalyzeBatch", request, **{"x-call-id": call_id})
    )
    assert reply.call_id == call_id
    assert [u.utterance.utterance_id for u in reply.utterances] == list(range(len(SALES_CALL)))
    values = [u.score.score for u in reply.utterances]
    labels = [scorer_pb2.SentimentLabel.Name(u.score.label).lower() for u in reply.utterances]
    _check_sour_call(call_id, [u.utterance.text for u in reply.utterances], values, labels)
    # The live and the batch path score the same text alike, to the last digit: a score depends on the
    # utterance alone, never on what it was batched with.
    assert values == streamed.scores
    assert labels == streamed.labels
    assert reply.summary.utterance_count == len(SALES_CALL)
    stored = await asyncio.to_thread(
        _query, mesh, "SELECT count(*) FROM nlp_events WHERE call_id = %s", call_id
    )
    assert stored == [(len(SALES_CALL),)]
    mesh.calls["batch"] = CallResult(call_id, [u.utterance.text for u in reply.utterances], values, labels)


# --------------------------------------------------------------------------------------------- the edge


async def test_edge_refuses_internal_services_and_metrics_the_internal_listener_serves_them(
    mesh: RunningMesh,
) -> None:
    """`callsense up`'s Envoy: the public port refuses the scorer (by path or by authority) and the
    gateway's /metrics; the internal port, the gateway's mesh proxy, reaches the real scorer by authority
    (the calls above went that way) and /metrics."""
    for authority in (None, "scorer"):
        options = [("grpc.default_authority", authority)] if authority else []
        async with grpc.aio.insecure_channel(mesh.grpc_target, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/callsense.v1.Scorer/Score")(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, (authority, refused.value)
    internal = f"127.0.0.1:{mesh.envoy_internal_port}"
    async with grpc.aio.insecure_channel(internal, options=[("grpc.default_authority", "scorer")]) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async with httpx.AsyncClient(timeout=10) as http:
        public = await http.get(f"{mesh.base_url}/metrics")
        assert public.status_code == 404 and "callsense_gateway" not in public.text
        metrics = await http.get(f"http://{internal}/metrics")
        assert metrics.status_code == 200 and "# TYPE callsense_gateway_active_calls gauge" in metrics.text
        # Envoy answered the refusals itself: the public listener's direct responses, none internal.
        stats = (
            await http.get(f"http://127.0.0.1:{mesh.envoy_admin_port}/stats?filter=rq_direct_response")
        ).text
    counts = dict(line.split(": ") for line in stats.splitlines() if ": " in line)
    assert int(counts["http.public.rq_direct_response"]) >= 3, stats
    assert int(counts["http.internal.rq_direct_response"]) == 0, stats


# --------------------------------------------------------------------------------------------- tracing


def _call_trace_complete(call_id: str) -> Callable[[list[ExportedSpan]], bool]:
    """True once one trace of the call holds every hop and every span's parent: Envoy at the edge and in
    front of each service the gateway calls (the chopper, the scorer, the post-call worker), the gateway,
    and the services' server spans. Each process exports on its own clock (Envoy every 5 s), so a trace
    is whole only when no span waits for its parent."""

    def complete(spans: list[ExportedSpan]) -> bool:
        ids = {s.trace_id for s in spans if s.attributes.get("call.id") == call_id}
        for trace_id in ids:
            ours = [s for s in spans if s.trace_id == trace_id]
            services = {s.service_name for s in ours}
            envoy = sum(s.service_name == "envoy" for s in ours)
            span_ids = {s.span_id for s in ours}
            roots = [s for s in ours if not s.parent_span_id or s.parent_span_id not in span_ids]
            # Envoy's internal hops (chopper, scorer, post-call worker) alone make three Envoy spans, so
            # the count does not say the edge span has come: the one root must be Envoy's.
            if (
                services >= MESH_SERVICES
                and envoy >= 3
                and len(roots) == 1
                and roots[0].service_name == "envoy"
            ):
                return True
        return False

    return complete


async def _the_call_trace(mesh: RunningMesh, kind: str) -> tuple[str, list[ExportedSpan]]:
    """The one trace of a call (waiting for Envoy's 5 s export), after checking it is one and whole."""
    call_id = mesh.call(kind).call_id
    try:
        await mesh.collector.wait_for_async(_call_trace_complete(call_id), TRACE_TIMEOUT_S)
    except TimeoutError:
        seen = sorted(
            {
                f"{s.service_name}:{s.name}"
                for s in mesh.collector.spans()
                if s.attributes.get("call.id") == call_id
            }
        )
        pytest.fail(
            f"no trace of {kind} call {call_id} spans {sorted(MESH_SERVICES)} within {TRACE_TIMEOUT_S:g} s "
            f"(Envoy included 3 times); spans with its call.id: {seen}"
        )
    await asyncio.sleep(0.5)  # stragglers of the same trace (each exporter flushes on its own clock)

    traces = mesh.collector.traces(lambda s: s.attributes.get("call.id") == call_id)
    assert len(traces) == 1, f"{kind} call {call_id} is spread over {len(traces)} traces: " + "; ".join(
        f"{tid[:8]}: {sorted({f'{s.service_name}:{s.name}' for s in spans})}" for tid, spans in traces.items()
    )
    ((trace_id, spans),) = traces.items()
    return trace_id, spans


CALLS = ["websocket", "grpc", "batch"]


@pytest.mark.parametrize("kind", CALLS)
async def test_one_trace_per_call_spans_envoy_gateway_chopper_scorer(mesh: RunningMesh, kind: str) -> None:
    trace_id, spans = await _the_call_trace(mesh, kind)
    assert {s.service_name for s in spans} >= MESH_SERVICES
    # One root, Envoy's edge span (the client sent no trace context), and no orphan: every hop, the
    # WebSocket's messages and the call's chopper and scorer streams included, hangs off it.
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id or s.parent_span_id not in ids]
    assert len(roots) == 1, f"trace {trace_id} has {len(roots)} roots: {[str(s) for s in roots]}"
    assert roots[0].service_name == "envoy", f"the root of trace {trace_id} is {roots[0]}, not Envoy's"
    # Envoy at the edge, then again between the gateway and each service it calls.
    envoy_parents = {s.parent_span_id for s in spans if s.service_name == "envoy" and s.parent_span_id}
    by_id = {s.span_id: s for s in spans}
    assert {by_id[p].service_name for p in envoy_parents} == {"gateway"}, "Envoy hops not under the gateway"
    for service in ("chopper", "scorer"):
        servers = [s for s in spans if s.service_name == service and s.kind_name == "SPAN_KIND_SERVER"]
        assert servers and all(by_id[s.parent_span_id].service_name == "envoy" for s in servers), (
            f"{service}'s server spans are not children of Envoy's: {[str(s) for s in servers]}"
        )


@pytest.mark.parametrize("kind", CALLS)
async def test_call_id_on_every_span_of_the_call_trace(mesh: RunningMesh, kind: str) -> None:
    call_id = mesh.call(kind).call_id
    trace_id, spans = await _the_call_trace(mesh, kind)
    untagged = [
        f"{s.service_name}:{s.name} ({s.kind_name})" for s in spans if s.attributes.get("call.id") != call_id
    ]
    assert not untagged, f"spans of trace {trace_id} without call.id={call_id}: {untagged}"


# --------------------------------------------------------------------------------------------- a stage dies

RESTART_LINES = [
    "We went through the proposal with our finance team on Monday.",
    "The integration with our billing system is what matters most here.",
    "Honestly that is more than we planned to spend this year.",
    "Could you send over the onboarding plan before Friday?",
]


def _mesh_child(mesh: RunningMesh, module: str) -> psutil.Process:
    for proc in psutil.Process(mesh.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if module in proc.cmdline():
                return proc
    pytest.fail(mesh.diagnose(f"no {module} process under `callsense up`"))


async def _scores(mesh: RunningMesh, ws: Any, count: int) -> list[dict[str, Any]]:
    scores: list[dict[str, Any]] = []
    while len(scores) < count:
        event = json.loads(await asyncio.wait_for(ws.recv(), CALL_TIMEOUT_S))
        assert event["type"] != "error", mesh.diagnose(f"error event: {event}")
        if event["type"] == "score":
            scores.append(event)
    return scores


async def test_a_call_survives_its_scorer_and_chopper_being_killed(mesh: RunningMesh) -> None:
    """SIGKILL the scorer, then the chopper, of `callsense up` in the middle of a live call through Envoy:
    the supervisor starts each again, the gateway opens the stream again through Envoy and sends what was
    not answered. Sent, scored and stored: all equal, in order, none twice."""
    call_id = f"e2e-restart-{uuid.uuid4().hex[:8]}"
    texts: list[str] = []
    async with ws_connect(
        mesh.ws_url, additional_headers={**mesh.headers, "x-call-id": call_id}, open_timeout=10
    ) as ws:
        await ws.send(json.dumps({"type": "start", "call_id": call_id}))
        assert json.loads(await ws.recv())["type"] == "started"
        scores: list[dict[str, Any]] = []
        for module in ("scorer_service", "chopper_service"):
            for killed in (False, True):
                if killed:
                    victim = _mesh_child(mesh, module)
                    victim.kill()
                    victim.wait(timeout=10)
                for _ in range(2):
                    text = f"{RESTART_LINES[len(texts) % len(RESTART_LINES)][:-1]} (point {len(texts)})."
                    start_ms, end_ms = _utterance_times(len(texts))
                    message = {"type": "utterance", "text": text, "channel": "customer"}
                    await ws.send(json.dumps(message | {"start_ms": start_ms, "end_ms": end_ms}))
                    texts.append(text)
                scores += await _scores(mesh, ws, 2)
        await ws.send(json.dumps({"type": "stop"}))
        summary = (await mesh.events_until_summary(ws, f"WebSocket call {call_id}"))[-1]
    # The restarted processes are the mesh's now: the Ctrl-C test checks they stop too.
    mesh.descendants = psutil.Process(mesh.process.pid).children(recursive=True)

    assert [s["text"] for s in scores] == texts, mesh.diagnose("scores lost, doubled or out of order")
    assert summary["status"] == "ended" and summary["utterance_count"] == len(texts), summary
    stored = await asyncio.to_thread(
        _query, mesh, "SELECT text FROM nlp_events WHERE call_id = %s ORDER BY utterance_id", call_id
    )
    assert [row[0] for row in stored] == texts
    restarts = re.findall(r"^callsense \| (scorer|chopper) .*(?:restart|again)", mesh.output(400), re.M)
    assert {"scorer", "chopper"} <= set(restarts), mesh.diagnose(
        "the supervisor did not say it restarted them"
    )


# --------------------------------------------------------------------------------------------- Ctrl-C


async def test_ctrl_c_stops_everything(mesh: RunningMesh) -> None:
    assert len(mesh.descendants) >= 4, f"expected Envoy, chopper, scorer and gateway: {mesh.descendants}"
    assert mesh.postmaster_pid is not None and _running(mesh.postmaster_pid), "no embedded PostgreSQL"
    code = await stop_with_ctrl_c(mesh)
    await assert_stopped_cleanly(mesh, code)
    assert "stopped" in mesh.output(20), mesh.diagnose("the supervisor did not report a clean stop")


# --------------------------------------------------------------------------------------------- replicas


def _scorer_requests_by_host(admin_port: int) -> dict[str, int]:
    """Envoy's count of requests to each scorer replica (health checks are not counted)."""
    text = httpx.get(f"http://127.0.0.1:{admin_port}/clusters", timeout=5).text
    counts = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "scorer" and parts[2] == "rq_total":
            counts[parts[1]] = int(parts[3])
    return counts


def _scored_spans_of(call_ids: set[str]) -> Callable[[list[ExportedSpan]], bool]:
    def arrived(spans: list[ExportedSpan]) -> bool:
        return {s.attributes.get("call.id") for s in spans if s.service_name == "scorer"} >= call_ids

    return arrived


async def test_two_scorer_replicas_both_get_calls(data_dir: Path, mesh: RunningMesh) -> None:
    """A second, lighter mesh with `--scorer-replicas 2`: Envoy spreads the calls' Score streams."""
    if mesh.process.poll() is None:  # the first mesh must be gone: two meshes overload this box
        await stop_with_ctrl_c(mesh)
    lines = SALES_CALL[2:4]  # two lines suffice: this test is about where the calls go
    with OtlpCollector() as collector:
        replicas = await start_mesh(data_dir, collector, data_dir.parent / "up-replicas.log", replicas=2)
        try:
            scorer_instances: set[str] = set()
            call_ids: set[str] = set()
            # Each call opens one Score stream; Envoy picks a replica per stream (least request). Calls
            # held open together land on both replicas; a few rounds make a miss vanishingly unlikely.
            for _ in range(4):
                ids = [f"e2e-rep-{uuid.uuid4().hex[:10]}" for _ in range(4)]
                results = await asyncio.gather(*(_websocket_call(replicas, cid, lines) for cid in ids))
                for events in results:
                    assert not [e for e in events if e["type"] == "error"], events
                call_ids.update(ids)
                with contextlib.suppress(TimeoutError):  # judged below, with what did arrive
                    await collector.wait_for_async(_scored_spans_of(set(ids)), 5.0)
                scorer_instances = {
                    s.instance
                    for s in collector.spans()
                    if s.service_name == "scorer" and s.attributes.get("call.id") in call_ids
                }
                if len(scorer_instances) == 2:
                    break
            by_host = await asyncio.to_thread(_scorer_requests_by_host, replicas.envoy_admin_port)
            assert len(by_host) == 2 and all(n > 0 for n in by_host.values()), (
                f"Envoy's requests per scorer replica: {by_host}"
            )
            assert len(scorer_instances) == 2, f"spans of {len(call_ids)} calls came from {scorer_instances}"
            code = await stop_with_ctrl_c(replicas)
            await assert_stopped_cleanly(replicas, code)
        finally:
            await asyncio.to_thread(_force_stop, replicas)
