"""Twilio Media Streams (``WS /v1/twilio/stream``) against the real mesh: the ASR (Whisper tiny.en),
chopper and scorer as subprocesses, embedded PostgreSQL. espeak-ng speech, 8 kHz mu-law, goes in as
Twilio ``media`` messages of 20 ms on the inbound (customer) track, with a little outbound (agent) audio;
a second screen watching the call by id sees the customer's final transcript and its score, which is
stored. Bad messages are reported to watchers as errors and the call goes on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from asr_service.audio import mulaw_encode
from callsense.v1 import audio_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.twilio import STREAM_PATH
from tests.support.audio import SENTENCE_A, normalise_words, speak_pcm16
from tests.support.mesh import RunningGateway
from tests.support.ws_client import receive_until_summary, send

pytestmark = pytest.mark.slow

TIMEOUT_S = 60.0
RATE = 8_000
FRAME_BYTES = RATE // 50  # 20 ms of 8 kHz mu-law
MULAW_SILENCE = b"\xff"


def twilio_url(gw: RunningGateway) -> str:
    return gw.http_url.replace("http://", "ws://") + STREAM_PATH


def start_message(
    call_sid: str, tracks: list[str], params: dict[str, str] | None = None, **fmt: object
) -> dict[str, Any]:
    media_format = {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1, **fmt}
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ" + call_sid[2:],
        "start": {
            "accountSid": "AC0000",
            "streamSid": "MZ" + call_sid[2:],
            "callSid": call_sid,
            "tracks": tracks,
            "mediaFormat": media_format,
            "customParameters": params or {},
        },
    }


def media_message(track: str, chunk: int, timestamp_ms: int, audio: bytes) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(chunk + 2),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(audio).decode("ascii"),
        },
    }


async def wait_live(gw: RunningGateway, call_id: str) -> None:
    async with asyncio.timeout(10):
        while gw.gateway.registry.get(call_id) is None:
            await asyncio.sleep(0.01)


async def test_twilio_call_is_transcribed_scored_and_watched(audio_gateway: RunningGateway) -> None:
    gw = audio_gateway
    call_id = f"twilio-test-{uuid.uuid4().hex[:12]}"
    pad = np.zeros(RATE // 2, dtype=np.int16)
    speech = np.concatenate([pad, speak_pcm16(SENTENCE_A, rate_hz=RATE), pad, pad])
    inbound = mulaw_encode(speech).tobytes()
    outbound = MULAW_SILENCE * (FRAME_BYTES * 25)  # half a second of the agent's (silent) line

    async with connect(twilio_url(gw)) as twilio:
        await send(twilio, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
        params = {"call_id": call_id, "tenant": "acme", "agent": "sam"}
        await send(twilio, start_message("CA" + uuid.uuid4().hex, ["inbound", "outbound"], params))
        await wait_live(gw, call_id)
        async with connect(f"{gw.ws_url}?watch={call_id}", additional_headers=gw.headers) as watcher:
            assert json.loads(await watcher.recv())["type"] == "watching"
            for chunk, offset in enumerate(range(0, len(inbound), FRAME_BYTES)):
                at_ms = offset * 1000 // RATE
                await send(
                    twilio, media_message("inbound", chunk, at_ms, inbound[offset : offset + FRAME_BYTES])
                )
                if offset < len(outbound):
                    frame = outbound[offset : offset + FRAME_BYTES]
                    await send(twilio, media_message("outbound", chunk, at_ms, frame))
                if chunk == 10:  # bad input mid-call: reported to watchers, the call goes on
                    await send(twilio, "{not json")
                    await send(twilio, {"event": "teleport"})
                    bad = media_message("inbound", chunk, at_ms, b"")
                    bad["media"]["payload"] = "***not base64***"
                    await send(twilio, bad)
            await send(twilio, {"event": "stop", "stop": {"callSid": "CA"}})
            events = await receive_until_summary(watcher)

    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_json", "unknown_type", "invalid_message"], errors
    assert all(e["fatal"] is False and e["call_id"] == call_id for e in errors), errors
    assert "base64" in errors[-1]["message"]

    finals = [e for e in events if e["type"] == "transcript" and e["is_final"]]
    assert finals, events
    assert all(t["channel"] == "customer" for t in finals), finals
    heard = normalise_words(" ".join(t["text"] for t in finals))
    assert {"price", "discount"} <= set(heard), heard

    scores = [e for e in events if e["type"] == "score"]
    assert scores and all(s["channel"] == "customer" for s in scores), events
    assert "price" in " ".join(s["text"] for s in scores).lower()
    summary = events[-1]
    assert summary["status"] == "ended" and summary["utterance_count"] == len(scores), summary

    stored = await gw.gateway.stores.default.list_events(call_id)
    assert [(e.utterance_id, e.text, e.channel) for e in stored] == [
        (s["utterance_id"], s["text"], "customer") for s in scores
    ]
    async with httpx.AsyncClient(base_url=gw.http_url, headers=gw.headers) as http:
        call = (await http.get(f"/v1/calls/{call_id}")).json()
    assert call["call_id"] == call_id and call["metadata"]["tenant"] == "acme", call
    assert len(call["events"]) == len(scores) and call["status"] == "ended", call


async def test_twilio_bad_input_never_breaks_the_stream(audio_gateway: RunningGateway) -> None:
    gw = audio_gateway
    call_sid = "CA" + uuid.uuid4().hex
    call_id = f"twilio-{call_sid}"  # no customParameters.call_id: named after the callSid
    async with connect(twilio_url(gw)) as twilio:
        # Before start: nothing to report to (logged only), and the stream stays open.
        await send(twilio, "{not json")
        await send(twilio, media_message("inbound", 0, 0, MULAW_SILENCE * FRAME_BYTES))
        await send(twilio, {"event": "teleport"})
        await send(twilio, {"event": "stop"})
        # A format Twilio never sends: no call starts.
        await send(twilio, start_message(call_sid, ["inbound"], encoding="audio/x-alaw"))
        await send(twilio, start_message(call_sid, ["inbound"], {"tenant": "acme"}))
        await wait_live(gw, call_id)
        session = gw.gateway.registry.get(call_id)
        assert session is not None and session.audio is not None
        assert session.audio.channel_roles == ("customer",)
        async with connect(f"{gw.ws_url}?watch={call_id}", additional_headers=gw.headers) as watcher:
            assert json.loads(await watcher.recv())["type"] == "watching"
            # outbound was not among the stream's tracks
            await send(twilio, media_message("outbound", 0, 0, MULAW_SILENCE * FRAME_BYTES))
            for chunk in range(5):
                await send(twilio, media_message("inbound", chunk, chunk * 20, MULAW_SILENCE * FRAME_BYTES))
            await send(twilio, {"event": "mark", "mark": {"name": "x"}})  # ignored
            await send(twilio, {"event": "stop"})
            events = await receive_until_summary(watcher)
    assert [e["type"] for e in events] == ["error", "summary"], events
    assert events[0]["code"] == "invalid_channel" and events[0]["fatal"] is False, events
    assert events[-1]["status"] == "ended", events
    row = await gw.gateway.stores.default.get_call(call_id)
    assert row is not None


async def test_grpc_stream_call_takes_role_tagged_audio(audio_gateway: RunningGateway) -> None:
    """The public gRPC StreamCall: a start with CallStart.format, then AudioChunks (one role's mono audio,
    tagged with it) feed the same ASR path as the WebSocket and Twilio."""
    gw, call_id = audio_gateway, f"grpc-audio-{uuid.uuid4().hex[:12]}"
    pad = np.zeros(RATE // 2, dtype=np.int16)
    audio = mulaw_encode(np.concatenate([pad, speak_pcm16(SENTENCE_A, rate_hz=RATE), pad, pad])).tobytes()
    start = audio_pb2.CallStart(
        call_id=call_id,
        format=audio_pb2.AudioFormat(encoding=audio_pb2.MULAW, sample_rate_hz=RATE, channels=2),
        channel_roles=[audio_pb2.AGENT, audio_pb2.CUSTOMER],
        metadata=audio_pb2.CallMetadata(tenant="acme"),
    )

    async def requests() -> AsyncIterator[sentiment_pb2.StreamCallRequest]:
        yield sentiment_pb2.StreamCallRequest(call_id=call_id, start=start)
        for seq, offset in enumerate(range(0, len(audio), FRAME_BYTES * 5)):  # 100 ms chunks
            chunk = audio_pb2.AudioChunk(
                call_id=call_id,
                seq=seq,
                channel=audio_pb2.CUSTOMER,
                timestamp_ms=offset * 1000 // RATE,
                audio=audio[offset : offset + FRAME_BYTES * 5],
            )
            yield sentiment_pb2.StreamCallRequest(call_id=call_id, audio=chunk)
        yield sentiment_pb2.StreamCallRequest(call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id))

    async with gw.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        events = [e async for e in stub.StreamCall(requests(), timeout=TIMEOUT_S)]

    kinds = [e.WhichOneof("event") for e in events]
    assert "error" not in kinds, events
    finals = [e.transcript for e in events if e.WhichOneof("event") == "transcript" and e.transcript.is_final]
    assert finals and all(t.channel == audio_pb2.CUSTOMER for t in finals), finals
    assert {"price", "discount"} <= set(normalise_words(" ".join(t.text for t in finals)))
    assert "score" in kinds and kinds[-1] == "summary", kinds
    stored = await gw.gateway.stores.default.list_events(call_id)
    assert stored and all(e.channel == "customer" for e in stored)
