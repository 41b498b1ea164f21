"""A live call survives its scorer, its chopper or its ASR being SIGKILLed mid-call and started again (what
the supervisor or Kubernetes does): the gateway opens the stage's stream again and sends what was not
answered (to the ASR: the audio it had not made finals of). Counted at the end: utterances sent, scored,
stored: all equal, none doubled, in order; every word spoken transcribed once. Real processes throughout
(ASR, chopper, scorer, gateway, PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway.calls.settings import SessionSettings
from tests.support.audio import normalise_words, speak_pcm16
from tests.support.mesh import (
    MeshServices,
    _serve_gateway,
    _stop,
    _wait_serving,
    require_whisper,
    spawn_asr,
    spawn_chopper,
    spawn_scorer,
)
from tests.support.ws_client import receive, receive_until_summary, send
from tools.ports import free_port

pytestmark = pytest.mark.slow

LINES = [
    "We looked at the proposal with the team last week.",
    "The integration with our billing system matters most to us.",
    "That is more than we hoped to spend this year.",
    "Could you walk me through the onboarding plan?",
    "I would need to bring finance into the next call.",
]


def utterance(index: int) -> dict[str, Any]:
    at = index * 4000
    text = f"{LINES[index % len(LINES)][:-1]}, as item {index} of our list."  # one sentence each
    return {"type": "utterance", "text": text, "channel": "customer", "start_ms": at, "end_ms": at + 3500}


async def scores_of(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    scores: list[dict[str, Any]] = []
    while len(scores) < count:
        event = await receive(ws, timeout_s=120)
        assert event["type"] != "error", event
        if event["type"] == "score":
            scores.append(event)
    return scores


async def test_a_call_survives_its_scorer_and_chopper_being_killed(
    mesh_services: MeshServices, gateway_db_url: str, tmp_path: Path
) -> None:
    chopper_addr, scorer_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    started: dict[str, subprocess.Popen[bytes]] = {}
    spawners: dict[str, tuple[str, Callable[[str, Path], subprocess.Popen[bytes]]]] = {
        "chopper": (chopper_addr, spawn_chopper),
        "scorer": (scorer_addr, spawn_scorer),
    }

    async def start(name: str) -> None:
        addr, spawn = spawners[name]
        log = tmp_path / f"{name}-{len(started)}.log"
        started[name] = spawn(addr, log)
        await asyncio.to_thread(_wait_serving, name, addr, started[name], log)

    def kill(name: str) -> None:
        started[name].send_signal(signal.SIGKILL)
        started[name].wait(timeout=10)

    config = mesh_services.config(
        database_url=gateway_db_url, chopper_addr=chopper_addr, scorer_addr=scorer_addr
    )
    settings = SessionSettings(grace_s=5.0, stage_reopen_s=90.0)
    call_id = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        await start("chopper")
        await start("scorer")
        async with _serve_gateway(config, settings) as gw:
            async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
                await send(ws, {"type": "start", "call_id": call_id})
                assert (await receive(ws))["type"] == "started"
                sent = 0
                for _ in range(3):
                    await send(ws, utterance(sent))
                    sent += 1
                scores = await scores_of(ws, 3)

                for stage in ("scorer", "chopper"):
                    kill(stage)
                    for _ in range(4):  # sent while the stage is dead: held, then sent again
                        await send(ws, utterance(sent))
                        sent += 1
                    await start(stage)
                    scores += await scores_of(ws, 4)

                await send(ws, {"type": "stop"})
                summary = (await receive_until_summary(ws))[-1]
            row = await gw.gateway.get_call(call_id)
            reopens = gw.gateway.metrics.render()
    finally:
        for process in started.values():
            _stop(process)

    sent_texts = [utterance(i)["text"] for i in range(sent)]
    assert [s["text"] for s in scores] == sent_texts  # every one scored once, in order
    assert len({s["utterance_id"] for s in scores}) == sent
    assert summary["status"] == "ended" and summary["utterance_count"] == sent
    assert row is not None and row.status == "ended"
    assert [e.text for e in row.events] == sent_texts  # stored once each
    assert 'callsense_gateway_stage_reopens_total{stage="scorer"}' in reopens
    assert 'callsense_gateway_stage_reopens_total{stage="chopper"}' in reopens


RATE = 16_000
FRAME_BYTES = RATE * 2 // 20  # 50 ms of mono PCM16
SPOKEN = [
    "We looked at the proposal with our team last week.",
    "Honestly, that is well over what we budgeted for this year.",
    "I would need to bring finance into the next call.",
]
KEYWORDS = [{"proposal", "team"}, {"budgeted", "year"}, {"finance", "call"}]


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def spoken(text: str) -> bytes:
    return speak_pcm16(text).astype("<i2").tobytes()


async def send_audio(ws: ClientConnection, audio: bytes) -> None:
    for offset in range(0, len(audio), FRAME_BYTES):
        await send(ws, audio[offset : offset + FRAME_BYTES])  # faster than real time


async def test_an_audio_call_survives_its_asr_being_killed(
    mesh_services: MeshServices, gateway_db_url: str, tmp_path: Path
) -> None:
    """Killed while the second sentence is half heard (shown in partials, not finished): that sentence is
    heard again in full on the new stream, the first is not heard twice, the third comes after."""
    require_whisper()
    asr_addr = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []

    async def start_asr() -> None:
        log = tmp_path / f"asr-{len(processes)}.log"
        processes.append(spawn_asr(asr_addr, log))
        await asyncio.to_thread(_wait_serving, "asr", asr_addr, processes[-1], log)

    second = spoken(SPOKEN[1])
    half = len(second) // 2 // 2 * 2
    config = mesh_services.config(database_url=gateway_db_url, asr_addr=asr_addr)
    settings = SessionSettings(grace_s=5.0, stage_reopen_s=120.0)
    call_id = f"asr-restart-{uuid.uuid4().hex[:8]}"
    audio = {"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 1, "channel_roles": ["customer"]}
    events: list[dict[str, Any]] = []

    async def receive_until(done: Callable[[dict[str, Any]], bool]) -> None:
        while True:
            events.append(await receive(ws, timeout_s=120))
            assert events[-1]["type"] != "error", events[-1]
            if done(events[-1]):
                return

    try:
        await start_asr()
        async with _serve_gateway(config, settings) as gw:
            async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
                await send(ws, {"type": "start", "call_id": call_id, "audio": audio})
                assert (await receive(ws))["type"] == "started"
                await send_audio(ws, silence(0.5) + spoken(SPOKEN[0]) + silence(1.2))
                await receive_until(lambda e: e["type"] == "transcript" and e["is_final"] and bool(e["text"]))
                first_end = events[-1]["end_ms"]
                await send_audio(ws, second[:half])
                await receive_until(lambda e: e["type"] == "transcript" and e["start_ms"] > first_end)

                processes[-1].send_signal(signal.SIGKILL)  # mid-sentence, its partials shown
                processes[-1].wait(timeout=10)
                rest = second[half:] + silence(1.2) + spoken(SPOKEN[2]) + silence(1.2)
                sender = asyncio.create_task(send_audio(ws, rest))  # held back while the ASR is away
                await start_asr()
                await sender
                await send(ws, {"type": "stop"})
                events += await receive_until_summary(ws)
            row = await gw.gateway.get_call(call_id)
            metrics = gw.gateway.metrics.render()
    finally:
        for process in processes:
            _stop(process)

    assert not [e for e in events if e["type"] == "error"], events
    transcripts = [e for e in events if e["type"] == "transcript"]
    finals = [t for t in transcripts if t["is_final"]]
    # Every id shown is finished exactly once, ids run 0, 1, 2, ... and finals come in call order.
    assert sorted(t["segment_id"] for t in finals) == list(range(len(finals))), finals
    assert {t["segment_id"] for t in transcripts} == {t["segment_id"] for t in finals}
    spoken_finals = [t for t in finals if t["text"].strip()]
    starts = [t["start_ms"] for t in spoken_finals]
    assert starts == sorted(starts), spoken_finals
    # Every sentence heard, none twice.
    for keywords in KEYWORDS:
        hits = [t for t in spoken_finals if keywords & set(normalise_words(t["text"]))]
        assert len(hits) == 1, (keywords, spoken_finals)
    # What was heard was scored and stored once each.
    scores = [e for e in events if e["type"] == "score"]
    summary = events[-1]
    assert summary["type"] == "summary" and summary["status"] == "ended"
    assert summary["utterance_count"] == len(scores) >= len(SPOKEN)
    assert row is not None and [e.text for e in row.events] == [s["text"] for s in scores]
    assert 'callsense_gateway_stage_reopens_total{stage="asr"}' in metrics
