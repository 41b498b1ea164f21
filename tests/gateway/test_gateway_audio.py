"""Audio calls through the gateway's WebSocket against the real mesh: the ASR (Whisper tiny.en), chopper
and scorer as subprocesses, embedded PostgreSQL. Speech from espeak-ng goes in as 50 ms PCM16 frames;
transcript events, then scores of the finals, come back, and the finals are stored in nlp_events. Bad
audio input gets a clear error and the call goes on.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway.calls.inputs import MAX_AUDIO_FRAME_BYTES
from tests.support.audio import SENTENCE_A, normalise_words, speak_pcm16
from tests.support.mesh import RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send

pytestmark = pytest.mark.slow

RATE = 16_000
FRAME_BYTES = RATE * 2 // 20  # 50 ms of mono PCM16
AUDIO = {"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 1, "channel_roles": ["customer"]}


def new_call_id() -> str:
    return f"audio-{uuid.uuid4().hex[:12]}"


async def start_call(ws: ClientConnection, call_id: str, audio: object = AUDIO) -> dict[str, Any]:
    await send(ws, {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme"}, "audio": audio})
    return await receive(ws)


async def test_speech_is_transcribed_scored_and_stored(audio_gateway: RunningGateway) -> None:
    gw, call_id = audio_gateway, new_call_id()
    pad = np.zeros(RATE // 2, dtype=np.int16)
    audio = np.concatenate([pad, speak_pcm16(SENTENCE_A), pad, pad]).astype("<i2").tobytes()
    async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
        assert (await start_call(ws, call_id))["type"] == "started"
        for offset in range(0, len(audio), FRAME_BYTES):
            await send(ws, audio[offset : offset + FRAME_BYTES])  # faster than real time
        await send(ws, {"type": "stop"})
        events = await receive_until_summary(ws)

    assert not [e for e in events if e["type"] == "error"], events
    transcripts = [e for e in events if e["type"] == "transcript"]
    finals = [t for t in transcripts if t["is_final"]]
    assert finals, events
    heard = normalise_words(" ".join(t["text"] for t in finals))
    assert {"price", "discount"} <= set(heard), heard
    for t in transcripts:
        assert t["call_id"] == call_id and t["channel"] == "customer"
        assert set(t) == {
            "type", "call_id", "seq", "segment_id", "is_final", "text", "channel", "start_ms", "end_ms",
            "unheard_reason",
        }  # fmt: skip
        assert t["unheard_reason"] == ""  # clear speech: every turn heard
        assert 0 <= t["start_ms"] <= t["end_ms"] <= len(audio) // 2 * 1000 // RATE + 100

    scores = [e for e in events if e["type"] == "score"]
    assert scores, events
    assert "price" in " ".join(s["text"] for s in scores).lower()
    assert all(s["channel"] == "customer" for s in scores)
    assert min(s["seq"] for s in scores) > min(t["seq"] for t in finals)  # a final, then its score
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(events)))  # one sequence for transcripts, scores, badge, summary

    summary = events[-1]
    assert summary["status"] == "ended" and summary["utterance_count"] == len(scores)
    stored = await gw.gateway.stores.default.list_events(call_id)
    assert [(e.utterance_id, e.text) for e in stored] == [(s["utterance_id"], s["text"]) for s in scores]


async def test_bad_audio_input_is_refused_clearly(audio_gateway: RunningGateway) -> None:
    gw = audio_gateway
    async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
        # Binary before any start.
        await send(ws, b"\x00\x01" * 800)
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == "audio_not_enabled", error
        assert '"audio"' in error["message"] and "start" in error["message"]

        # A bad format: the call does not start.
        for bad, says in [
            ({"encoding": "flac", "sample_rate_hz": RATE}, "pcm16, mulaw or alaw"),
            ({"encoding": "pcm16", "sample_rate_hz": 100}, "sample_rate_hz"),
            ({"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 3}, "channels"),
            ({**AUDIO, "channels": 2}, "channel_roles"),
            ("pcm16", "object"),
        ]:
            error = await start_call(ws, new_call_id(), bad)
            assert error["type"] == "error" and error["code"] == "invalid_audio_format", (bad, error)
            assert says in error["message"], (bad, error)

        # A text-only call: binary frames are refused, text goes on.
        call_id = new_call_id()
        assert (await start_call(ws, call_id, None))["type"] == "started"
        await send(ws, b"\x00\x01" * 800)
        error = await receive(ws)
        assert error["code"] == "audio_not_enabled" and error["call_id"] == call_id, error
        assert "declare" in error["message"] and '"audio"' in error["message"]
        await send(ws, {"type": "stop"})
        assert (await receive_until_summary(ws))[-1]["status"] == "ended"

        # An audio call: a frame over 1 MB is refused; the call still ends cleanly.
        call_id = new_call_id()
        assert (await start_call(ws, call_id))["type"] == "started"
        await send(ws, b"\x00" * (MAX_AUDIO_FRAME_BYTES + 2))
        error = await receive(ws)
        assert error["code"] == "frame_too_large" and error["fatal"] is False, error
        assert f"{MAX_AUDIO_FRAME_BYTES:,}" in error["message"]
        await send(ws, b"\x00\x00" * (RATE // 20))  # 50 ms of silence: accepted, transcribes to nothing
        await send(ws, {"type": "stop"})
        events = await receive_until_summary(ws)
        assert [e["type"] for e in events] == ["summary"] and events[0]["status"] == "ended", events
