"""`python -m gateway` as a real process: both servers up, spans carry call.id, SIGTERM ends live calls
cleanly (reason shutdown, summary stored, its report from the real post-call worker) and the process
exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc.aio
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import ClientConnection, connect

from callsense.telemetry import read_trace_file
from gateway.auth.key_store import KeyStore
from gateway.store import Store
from tests.support.audio import normalise_words, speak_pcm16
from tests.support.auth import bearer, make_key
from tests.support.mesh import ROOT, MeshServices
from tools.ports import free_port

pytestmark = pytest.mark.slow

RATE = 16_000


async def _wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            if process.returncode is not None:
                pytest.fail(f"gateway exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if (await http.get(url, timeout=1.0)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"gateway not ready:\n{log.read_text()[-3000:]}")


async def test_python_m_gateway(mesh_services: MeshServices, gateway_db_url: str, tmp_path: Path) -> None:
    trace, log = tmp_path / "spans.jsonl", tmp_path / "gateway.log"
    key = await _key(gateway_db_url)
    process, http_addr, grpc_addr = await _gateway_process(
        mesh_services, gateway_db_url, tmp_path, log, CALLSENSE_TRACE_FILE=str(trace)
    )
    try:
        async with grpc.aio.insecure_channel(grpc_addr) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="callsense.v1.Sentiment"), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        call_id = f"proc-{uuid.uuid4().hex[:10]}"
        ws = await connect(f"ws://{http_addr}/v1/sentiment/stream", additional_headers=bearer(key))
        await ws.send(json.dumps({"type": "start", "call_id": call_id}))
        await ws.send(
            json.dumps(
                {
                    "type": "utterance",
                    "text": "Sounds good.",
                    "channel": "agent",
                    "start_ms": 0,
                    "end_ms": 900,
                }
            )
        )
        events = [json.loads(await asyncio.wait_for(ws.recv(), 60)) for _ in range(2)]
        assert [e["type"] for e in events] == ["started", "score"]

        process.send_signal(signal.SIGTERM)  # mid-call: the call must still be ended and summarised
        last = json.loads(await asyncio.wait_for(ws.recv(), 60))
        while last["type"] != "summary":  # the client hears how its call ended before the server goes
            last = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert last["status"] == "ended" and last["reason"] == "shutdown", last
        assert await asyncio.wait_for(process.wait(), 60) == 0, log.read_text()[-3000:]
        await ws.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    store = await Store.open(gateway_db_url, migrate=False)
    try:
        row = await store.get_call(call_id)
    finally:
        await store.close()
    assert row is not None and row.status == "ended" and len(row.events) == 1
    assert row.summary is not None and row.summary["reason"] == "shutdown"
    assert "report_pending" not in row.summary and row.summary["lines"]  # the worker answered

    spans = [s for s in read_trace_file(trace) if s["attributes"].get("call.id") == call_id]
    names = {s["name"] for s in spans}
    assert {"WS start", "WS utterance"} <= names
    assert any("Chopper/Chop" in n for n in names) and any("Scorer/Score" in n for n in names), names
    assert any("PostCall/Report" in n for n in names), names  # the report, asked of the worker at the end
    assert {s["service.name"] for s in spans} == {"gateway"}


async def _key(db_url: str) -> str:
    keys = await KeyStore.open(db_url)
    try:
        return await make_key(keys)
    finally:
        await keys.close()


async def _gateway_process(
    mesh_services: MeshServices, db_url: str, data_dir: Path, log: Path, **env_extra: str
) -> tuple[asyncio.subprocess.Process, str, str]:
    """A `python -m gateway` on free ports; its HTTP and gRPC addresses once ready."""
    http_addr, grpc_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        DATABASE_URL=db_url,
        CALLSENSE_CHOPPER_ADDR=mesh_services.chopper_addr,
        CALLSENSE_SCORER_ADDR=mesh_services.scorer_addr,
        CALLSENSE_POSTCALL_ADDR=mesh_services.postcall_addr,
        CALLSENSE_GATEWAY_HTTP=http_addr,
        CALLSENSE_GATEWAY_GRPC=grpc_addr,
        CALLSENSE_DATA_DIR=str(data_dir),
        **env_extra,
    )
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        await _wait_ready(f"http://{http_addr}/readyz", process, log)
    except BaseException:
        if process.returncode is None:
            process.kill()
        raise
    return process, http_addr, grpc_addr


async def test_a_call_goes_on_at_another_gateway_when_its_own_is_killed(
    mesh_services: MeshServices, gateway_db_url: str, tmp_path: Path
) -> None:
    """Two replicas on one database; the one holding a live call is SIGKILLed. The client comes back to the
    other (as Envoy would send it) with the same call id: the call resumes with its stored scores replayed,
    utterances the client sends again are not scored twice, new ones go on. Counted at the end: sent,
    scored, stored all equal, no duplicates."""
    key = await _key(gateway_db_url)
    lines = [f"We reviewed item {i} of the proposal with the finance team this week." for i in range(6)]

    def utterance(i: int) -> str:
        at = i * 4000
        message = {
            "type": "utterance",
            "text": lines[i],
            "channel": "customer",
            "start_ms": at,
            "end_ms": at + 3500,
        }
        return json.dumps(message)

    async def scores(ws: object, n: int) -> list[dict[str, object]]:
        got: list[dict[str, object]] = []
        while len(got) < n:
            event = json.loads(await asyncio.wait_for(ws.recv(), 60))  # type: ignore[attr-defined]
            assert event["type"] != "error", event
            if event["type"] == "score":
                got.append(event)
        return got

    a, a_http, _ = await _gateway_process(mesh_services, gateway_db_url, tmp_path / "a", tmp_path / "a.log")
    b, b_http, _ = await _gateway_process(mesh_services, gateway_db_url, tmp_path / "b", tmp_path / "b.log")
    call_id = f"failover-{uuid.uuid4().hex[:8]}"
    try:
        ws = await connect(f"ws://{a_http}/v1/sentiment/stream", additional_headers=bearer(key))
        await ws.send(json.dumps({"type": "start", "call_id": call_id}))
        assert json.loads(await ws.recv())["type"] == "started"
        for i in range(3):
            await ws.send(utterance(i))
        first = await scores(ws, 3)
        a.send_signal(signal.SIGKILL)
        await a.wait()

        async with connect(f"ws://{b_http}/v1/sentiment/stream", additional_headers=bearer(key)) as again:
            await again.send(json.dumps({"type": "start", "call_id": call_id}))
            started = json.loads(await again.recv())
            assert started["type"] == "started" and started["resumed"] is True
            replayed = await scores(again, 3)  # the history: what A had stored
            for i in range(6):  # the client does not know what A heard: it sends everything again
                await again.send(utterance(i))
            new = await scores(again, 3)
            await again.send(json.dumps({"type": "stop"}))
            summary = json.loads(await asyncio.wait_for(again.recv(), 60))
            while summary["type"] != "summary":
                summary = json.loads(await asyncio.wait_for(again.recv(), 60))
    finally:
        for process in (a, b):
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert [s["utterance_id"] for s in replayed] == [s["utterance_id"] for s in first] == [0, 1, 2]
    assert [s["text"] for s in new] == lines[3:]
    # Ids stay unique and increasing (the dropped re-sends used some up: not contiguous).
    ids = [s["utterance_id"] for s in new]
    assert ids == sorted(ids) and ids[0] > 2 and len(set(ids)) == 3
    assert summary["status"] == "ended" and summary["utterance_count"] == 6
    store = await Store.open(gateway_db_url, migrate=False)
    try:
        row = await store.get_call(call_id)
    finally:
        await store.close()
    assert row is not None and [e.text for e in row.events] == lines  # each once, in order


async def test_an_audio_call_goes_on_at_another_gateway_when_its_own_is_killed(
    mesh_services: MeshServices, asr_addr: str, gateway_db_url: str, tmp_path: Path
) -> None:
    """The same with speech: the client comes back to the other replica and goes on speaking (frames
    without timestamps); what it says there is placed after what the dead replica had heard, so the
    stored call reads in order and nothing is scored twice."""
    key = await _key(gateway_db_url)
    audio = {"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 1, "channel_roles": ["customer"]}
    sentences = [
        "We looked at the proposal with our team last week.",
        "I would need to bring finance into the next call.",
    ]

    async def send_speech(ws: ClientConnection, text: str) -> None:
        pcm = speak_pcm16(text).astype("<i2").tobytes() + bytes(RATE * 2)  # then a second of silence
        for offset in range(0, len(pcm), RATE // 10):
            await ws.send(pcm[offset : offset + RATE // 10])

    async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != kind:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
            assert events[-1]["type"] != "error", events[-1]
        return events

    env = {"CALLSENSE_ASR_ADDR": asr_addr}
    a, a_http, _ = await _gateway_process(
        mesh_services, gateway_db_url, tmp_path / "a", tmp_path / "a.log", **env
    )
    b, b_http, _ = await _gateway_process(
        mesh_services, gateway_db_url, tmp_path / "b", tmp_path / "b.log", **env
    )
    call_id = f"audio-failover-{uuid.uuid4().hex[:8]}"
    start = json.dumps({"type": "start", "call_id": call_id, "audio": audio})
    try:
        ws = await connect(
            f"ws://{a_http}/v1/sentiment/stream", additional_headers=bearer(key), max_size=None
        )
        await ws.send(start)
        assert json.loads(await ws.recv())["type"] == "started"
        await send_speech(ws, sentences[0])
        first = (await until(ws, "score"))[-1]
        a.send_signal(signal.SIGKILL)
        await a.wait()

        async with connect(f"ws://{b_http}/v1/sentiment/stream", additional_headers=bearer(key)) as again:
            await again.send(start)
            started = json.loads(await again.recv())
            assert started["type"] == "started" and started["resumed"] is True
            replayed = (await until(again, "score"))[-1]
            await send_speech(again, sentences[1])
            await again.send(json.dumps({"type": "stop"}))
            events = await until(again, "summary")
    finally:
        for process in (a, b):
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert replayed["utterance_id"] == first["utterance_id"] and replayed["text"] == first["text"]
    new = [e for e in events if e["type"] == "score"]
    assert new and all(s["start_ms"] >= first["end_ms"] for s in new), (first, new)
    assert {"bring", "next"} <= set(normalise_words(" ".join(s["text"] for s in new)))
    assert events[-1]["status"] == "ended" and events[-1]["utterance_count"] == 1 + len(new)
    store = await Store.open(gateway_db_url, migrate=False)
    try:
        row = await store.get_call(call_id)
    finally:
        await store.close()
    assert row is not None and [e.text for e in row.events] == [first["text"]] + [s["text"] for s in new]
    starts = [e.start_ms for e in row.events]
    assert starts == sorted(starts)
