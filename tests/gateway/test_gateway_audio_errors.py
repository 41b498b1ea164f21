"""Bad audio input on the live WebSocket, against the real mesh (ASR, chopper, scorer subprocesses,
embedded PostgreSQL): every problem gets a clear error, the call goes on, and nothing accepted is lost.

Already covered in test_gateway_audio.py (not repeated here): binary frames before start or on a
text-only call (audio_not_enabled), an unknown encoding, a bad rate, 3 channels, roles that do not match
the channel count, a 1 MB + 2 byte frame. Here: missing fields in the format, frames of odd length (a
half sample carried to the next frame), a 10 MB frame in the middle of speech, and a stream that stalls.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from gateway.calls.settings import SessionSettings
from tests.support.audio import SENTENCE_A, normalise_words, speak_pcm16, word_error_rate
from tests.support.mesh import MeshServices, RunningGateway, _serve_gateway
from tests.support.ws_client import receive, receive_until, send

pytestmark = pytest.mark.slow

RATE = 16_000
AUDIO = {"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 1, "channel_roles": ["customer"]}
IDLE_S = 8.0
"""The test gateway stops an audio call after this long without audio (the default is 10 minutes);
longer than the ASR's 2 s stall rule plus a decode, so a score that arrives while the call is still
live was released by the stall, not by the end of the call."""


@pytest_asyncio.fixture
async def idle_gateway(
    mesh_services: MeshServices, asr_addr: str, gateway_db_url: str
) -> AsyncIterator[RunningGateway]:
    config = mesh_services.config(asr_addr=asr_addr, database_url=gateway_db_url)
    settings = SessionSettings(grace_s=0.5, finish_timeout_s=30.0, audio_idle_timeout_s=IDLE_S)
    async with _serve_gateway(config, settings) as running:
        yield running


def new_call_id() -> str:
    return f"audio-err-{uuid.uuid4().hex[:12]}"


async def start_call(ws: ClientConnection, call_id: str, audio: object = AUDIO) -> dict[str, Any]:
    await send(ws, {"type": "start", "call_id": call_id, "audio": audio})
    return await receive(ws)


def speech_bytes(trailing_silence_s: float) -> bytes:
    pad = np.zeros(RATE // 2, dtype=np.int16)
    tail = np.zeros(int(trailing_silence_s * RATE), dtype=np.int16)
    return np.concatenate([pad, speak_pcm16(SENTENCE_A), tail]).astype("<i2").tobytes()


@pytest.mark.parametrize(
    ("audio", "says"),
    [
        ({}, "encoding None is unsupported: use pcm16, mulaw or alaw"),
        ({"encoding": "pcm16"}, "sample_rate_hz None is unsupported: use an integer in 8000..48000"),
        ({"sample_rate_hz": RATE, "channels": 1}, "encoding None is unsupported"),
        ({"encoding": "pcm16", "sample_rate_hz": "16000"}, "sample_rate_hz '16000' is unsupported"),
        ({**AUDIO, "bits": 16}, "unknown field(s) 'bits'"),
        ({**AUDIO, "channel_roles": ["boss"]}, "channel_roles must be a list of customer, agent or mixed"),
        ({**AUDIO, "channels": 2, "channel_roles": ["agent", "agent"]}, "repeats a role"),
    ],
    ids=["empty", "no-rate", "no-encoding", "rate-as-text", "unknown-field", "unknown-role", "same-role"],
)
async def test_a_missing_or_wrong_format_is_refused_and_the_connection_goes_on(
    running_gateway: RunningGateway, audio: dict[str, Any], says: str
) -> None:
    async with connect(running_gateway.ws_url, additional_headers=running_gateway.headers) as ws:
        error = await start_call(ws, new_call_id(), audio)
        assert error["type"] == "error" and error["code"] == "invalid_audio_format", error
        assert says in error["message"], error
        assert error["fatal"] is False
        call_id = new_call_id()  # the same connection starts a good call next
        assert (await start_call(ws, call_id, None)) == {
            "type": "started", "call_id": call_id, "resumed": False, "max_text_chars": 8000
        }  # fmt: skip
        assert await running_gateway.gateway.stores.default.get_call(call_id) is not None


async def test_odd_length_frames_and_a_10_mb_frame_lose_nothing(audio_gateway: RunningGateway) -> None:
    """Frames of 1601 bytes cut every other sample in half: the half is carried to the next frame, so
    the speech comes through whole. A 10 MB frame in the middle is refused alone; the call goes on."""
    gw, call_id = audio_gateway, new_call_id()
    audio = speech_bytes(trailing_silence_s=1.0)
    odd = 1601
    half = len(audio) // 2 // odd * odd
    async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
        assert (await start_call(ws, call_id))["type"] == "started"
        for offset in range(0, half, odd):
            await ws.send(audio[offset : offset + odd])
        await ws.send(b"\x00" * (10 * 1024 * 1024))
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == "frame_too_large", error
        assert error["fatal"] is False and "10,485,760 bytes" in error["message"], error
        for offset in range(half, len(audio), odd):
            await ws.send(audio[offset : offset + odd])
        await send(ws, {"type": "stop"})
        events = await receive_until(ws, "summary")

    assert not [e for e in events if e["type"] == "error"], events
    finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
    heard = " ".join(f["text"] for f in finals)
    assert word_error_rate(SENTENCE_A, heard) <= 0.25, heard
    assert {"price", "discount", "forward"} <= set(normalise_words(heard)), heard
    scores = [e for e in events if e["type"] == "score"]
    assert scores and events[-1]["status"] == "ended" and events[-1]["utterance_count"] == len(scores)
    stored = await gw.gateway.stores.default.list_events(call_id)
    assert [e.text for e in stored] == [s["text"] for s in scores]


async def test_a_stalled_stream_is_scored_then_ended(idle_gateway: RunningGateway) -> None:
    """Speech, then nothing: no trailing silence, no stop, the socket stays open. The ASR's stall rule
    ends the open segment after 2 s, so its final and score come while the call is still live; after
    IDLE_S without audio the gateway stops the call (reason audio_timeout) and the summary follows."""
    gw, call_id = idle_gateway, new_call_id()
    audio = speech_bytes(trailing_silence_s=0.0)
    frame = RATE * 2 // 20
    async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
        assert (await start_call(ws, call_id))["type"] == "started"
        for offset in range(0, len(audio), frame):
            await ws.send(audio[offset : offset + frame])

        score = (await receive_until(ws, "score"))[-1]
        session = gw.gateway.registry.get(call_id)
        assert session is not None and session.state == "live"  # released by the stall, not by an end
        assert "price" in score["text"].lower(), score
        events = await receive_until(ws, "summary")
        summary = events[-1]
        assert summary["status"] == "ended" and summary["reason"] == "audio_timeout", summary
        assert summary["utterance_count"] >= 1

        await ws.send(audio[:frame])  # the call is over: audio now is refused, clearly
        error = await receive(ws)
        assert error["code"] == "call_ended" and "start a new call" in error["message"], error

    stored = await gw.gateway.stores.default.get_call(call_id)
    assert stored is not None and stored.status == "ended"
    assert score["text"] in [e.text for e in stored.events]
