"""End to end, spoken: `callsense up` with every process real (the ASR included), audio through Envoy.

A short call spoken by espeak-ng, one agent sentence then two customer sentences with pauses between
them, goes in twice through Envoy's one port, each time at the pace of a live call:
- over the live WebSocket as stereo PCM16 16 kHz (agent left, customer right) in 50 ms frames;
- over the Twilio Media Streams endpoint as Twilio sends it: connected, start (streamSid, both tracks,
  the call id in customParameters), 20 ms 8 kHz mu-law media on the inbound (customer) and outbound
  (agent) tracks, stop; a second screen watches the call through Envoy.
Each time: a segment's partial transcripts come before its final and the final before its scores (by
the call's event seq), the words are the ones spoken, and nlp_events holds every scored utterance with
start_ms / end_ms where its speech was placed in the audio.

The mesh is started as tests/e2e/test_mesh_e2e.py starts it (its helpers are reused).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from asr_service.audio import mulaw_encode
from gateway.twilio import stream_path
from tests.e2e.test_mesh_e2e import (
    E2E_TWILIO_TOKEN,
    RunningMesh,
    _query,
    mesh_data_dir,
    speaking_mesh,
)
from tests.support.audio import normalise_words, speak_pcm16
from tests.support.twilio import twilio_signed

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TIME_TOLERANCE_MS = 500
"""Whisper's word times and the VAD's padding put a segment's edges a few hundred ms off the speech."""
SPEECH_THRESHOLD = 200
"""A PCM16 sample louder than this is speech (espeak-ng's edges are near-silent)."""

# (channel, text, words that must be heard); one sentence each: the chopper scores it as one utterance.
LINES: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("agent", "Thanks for joining the call today, the premium plan is five thousand a month.",
     frozenset({"thanks", "joining", "premium", "plan"})),
    ("customer", "Honestly the price is way too high and I am really disappointed.",
     frozenset({"price", "high", "disappointed"})),
    ("customer", "We would need a big discount to move forward.", frozenset({"discount", "forward"})),
)  # fmt: skip
LEAD_IN_S, GAP_S, TAIL_S = 0.5, 1.2, 1.5


# --------------------------------------------------------------------------------------------- the call


@dataclass(frozen=True)
class Spoken:
    """Where a line's speech lies in the call."""

    channel: str
    text: str
    words: frozenset[str]
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class SpokenCall:
    agent: npt.NDArray[np.int16]
    customer: npt.NDArray[np.int16]
    rate_hz: int
    lines: tuple[Spoken, ...]


def trimmed(clip: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    loud = np.flatnonzero(np.abs(clip.astype(np.int32)) > SPEECH_THRESHOLD)
    return clip[loud[0] : loud[-1] + 1]


def spoken_call(rate_hz: int) -> SpokenCall:
    """The lines spoken one after another, each on its own channel's track, silence elsewhere."""
    speech = [trimmed(speak_pcm16(text, rate_hz)) for _, text, _ in LINES]
    gap = int(GAP_S * rate_hz)
    starts = [int(LEAD_IN_S * rate_hz) + sum(len(s) + gap for s in speech[:i]) for i in range(len(LINES))]
    total = starts[-1] + len(speech[-1]) + int(TAIL_S * rate_hz)
    tracks = {"agent": np.zeros(total, dtype=np.int16), "customer": np.zeros(total, dtype=np.int16)}
    placed = []
    for start, clip, (channel, text, words) in zip(starts, speech, LINES, strict=True):
        tracks[channel][start : start + len(clip)] = clip
        end = start + len(clip)
        placed.append(Spoken(channel, text, words, start * 1000 // rate_hz, end * 1000 // rate_hz))
    return SpokenCall(tracks["agent"], tracks["customer"], rate_hz, tuple(placed))


async def paced(count: int, interval_s: float) -> AsyncIterator[int]:
    """0, 1, ... count - 1, each at its due time of a live call."""
    begin = time.perf_counter()
    for index in range(count):
        delay = begin + index * interval_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield index


# --------------------------------------------------------------------------------------------- checks


def check_call_events(call: SpokenCall, events: list[dict[str, Any]], *, partials: bool) -> None:
    """Transcripts and scores in order, the words heard, the times where the speech was."""
    errors = [e for e in events if e["type"] == "error"]
    assert not errors, errors
    assert [e["seq"] for e in events] == list(range(len(events))), "the call's events skip or repeat a seq"
    assert events[-1]["type"] == "summary" and events[-1]["status"] == "ended", events[-1]
    transcripts = [e for e in events if e["type"] == "transcript"]
    finals = [t for t in transcripts if t["is_final"] and t["text"].strip()]
    scores = [e for e in events if e["type"] == "score"]

    for final in finals:
        key = (final["channel"], final["segment_id"])
        earlier = [t for t in transcripts if (t["channel"], t["segment_id"]) == key and t is not final]
        assert all(t["seq"] < final["seq"] and not t["is_final"] for t in earlier), (final, earlier)
        if partials and final["end_ms"] - final["start_ms"] >= 2_500:  # a partial is due after 1 s
            assert earlier, (
                f"no partial before the final of a {final['end_ms'] - final['start_ms']} ms segment"
            )
        mine = [s for s in scores if s["channel"] == final["channel"] and within(s, final)]
        assert mine, f"no score for the final {final}: {scores}"
        assert all(s["seq"] > final["seq"] for s in mine), (final, mine)
    assert len(scores) == events[-1]["utterance_count"]
    assert all(any(within(s, f) for f in finals if f["channel"] == s["channel"]) for s in scores), scores

    for line in call.lines:
        mine = [f for f in finals if f["channel"] == line.channel and overlaps(f, line)]
        assert mine, f"nothing heard of {line.channel}'s {line.text!r} at {line.start_ms}..{line.end_ms} ms"
        heard = set(normalise_words(" ".join(f["text"] for f in mine)))
        assert line.words <= heard, f"{line.text!r}: heard {sorted(heard)}"
        first, last = min(f["start_ms"] for f in mine), max(f["end_ms"] for f in mine)
        assert abs(first - line.start_ms) <= TIME_TOLERANCE_MS, (line, mine)
        assert abs(last - line.end_ms) <= TIME_TOLERANCE_MS, (line, mine)


def within(span: dict[str, Any], outer: dict[str, Any]) -> bool:
    return outer["start_ms"] <= span["start_ms"] <= span["end_ms"] <= outer["end_ms"]


def overlaps(event: dict[str, Any], line: Spoken) -> bool:
    return event["start_ms"] < line.end_ms and line.start_ms < event["end_ms"]


async def check_stored(
    mesh: RunningMesh, call: SpokenCall, call_id: str, events: list[dict[str, Any]]
) -> None:
    """nlp_events holds each score of the call, with times inside the speech it was cut from."""
    rows = await asyncio.to_thread(
        _query,
        mesh,
        "SELECT utterance_id, channel, text, score, start_ms, end_ms FROM nlp_events "
        "WHERE call_id = %s ORDER BY utterance_id",
        call_id,
    )
    scores = sorted((e for e in events if e["type"] == "score"), key=lambda e: e["utterance_id"])
    assert [r[:3] for r in rows] == [(s["utterance_id"], s["channel"], s["text"]) for s in scores], rows
    assert [r[3] for r in rows] == pytest.approx([s["score"] for s in scores], abs=1e-6)
    for _, channel, text, _, start_ms, end_ms in rows:
        homes = [
            line
            for line in call.lines
            if line.channel == channel
            and line.start_ms - TIME_TOLERANCE_MS <= start_ms < end_ms <= line.end_ms + TIME_TOLERANCE_MS
        ]
        assert len(homes) == 1, f"row {channel} {start_ms}..{end_ms} ms {text!r} is in {len(homes)} lines"
        assert set(normalise_words(text)) & homes[0].words, (text, homes[0].text)


# --------------------------------------------------------------------------------------------- the mesh


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from mesh_data_dir(tmp_path_factory, "callsense-audio-data")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(data_dir: Path) -> AsyncIterator[RunningMesh]:
    async with speaking_mesh(data_dir, "up-audio.log") as running:
        yield running


# --------------------------------------------------------------------------------------------- WebSocket


async def test_spoken_call_over_the_websocket_through_envoy(mesh: RunningMesh) -> None:
    call_id = f"e2e-audio-ws-{uuid.uuid4().hex[:8]}"
    call = spoken_call(16_000)
    stereo = np.column_stack([call.agent, call.customer]).astype("<i2").tobytes()
    frame = 16_000 * 50 // 1000 * 4  # 50 ms, two channels of two bytes
    start = {
        "type": "start",
        "call_id": call_id,
        "metadata": {"tenant": "e2e"},
        "audio": {"encoding": "pcm16", "sample_rate_hz": 16_000, "channels": 2,
                  "channel_roles": ["agent", "customer"]},
    }  # fmt: skip
    async with ws_connect(
        mesh.ws_url, additional_headers={**mesh.headers, "x-call-id": call_id}, open_timeout=10
    ) as ws:
        await ws.send(json.dumps(start))
        started = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert started["type"] == "started", mesh.diagnose(f"start of {call_id}: {started}")
        reader = asyncio.create_task(mesh.events_until_summary(ws, f"WebSocket call {call_id}"))
        async for index in paced(-(-len(stereo) // frame), 0.05):
            await ws.send(stereo[index * frame : (index + 1) * frame])
        await ws.send(json.dumps({"type": "stop"}))
        events = await reader

    check_call_events(call, events, partials=True)
    await check_stored(mesh, call, call_id, events)


# --------------------------------------------------------------------------------------------- Twilio


async def watch(mesh: RunningMesh, call_id: str) -> ClientConnection:
    """A second screen on the call (through Envoy), once the gateway knows the call."""
    deadline = time.monotonic() + 15
    while True:
        ws = await ws_connect(
            f"{mesh.ws_url}?watch={call_id}", additional_headers=mesh.headers, open_timeout=10
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if first["type"] == "watching":
            return ws
        await ws.close()
        assert first.get("code") == "not_found" and time.monotonic() < deadline, mesh.diagnose(str(first))
        await asyncio.sleep(0.1)


def media(track: str, chunk: int, payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(chunk + 2),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
        }
    )


async def test_spoken_call_through_twilio_media_streams_through_envoy(mesh: RunningMesh) -> None:
    call_id = f"e2e-audio-twilio-{uuid.uuid4().hex[:8]}"
    call_sid = "CA" + uuid.uuid4().hex
    call = spoken_call(8_000)
    inbound, outbound = mulaw_encode(call.customer).tobytes(), mulaw_encode(call.agent).tobytes()
    frame = 8_000 * 20 // 1000  # 20 ms of mu-law, one byte a sample
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ" + call_sid[2:],
        "start": {
            "accountSid": "AC" + "0" * 32,
            "streamSid": "MZ" + call_sid[2:],
            "callSid": call_sid,
            "tracks": ["inbound", "outbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"call_id": call_id, "tenant": "e2e", "agent": "sam"},
        },
    }
    twilio_url = f"ws://127.0.0.1:{mesh.envoy_port}{stream_path('e2e')}"
    # Through Envoy, an upgrade Twilio did not sign is refused before it opens (403, the API's error body)...
    with pytest.raises(InvalidStatus) as unsigned:
        async with ws_connect(twilio_url, open_timeout=10):
            pass
    assert unsigned.value.response.status_code == 403, unsigned.value.response
    assert json.loads(unsigned.value.response.body or b"{}")["error"]["code"] == "forbidden"
    # ... and one signed as Twilio signs it, with tenant e2e's token, opens: Envoy passes the Host through,
    # and the gateway checks the wss:// URL Twilio dialled, whatever X-Forwarded-Proto Envoy set.
    signed = twilio_signed(E2E_TWILIO_TOKEN, twilio_url)
    async with ws_connect(twilio_url, additional_headers=signed, open_timeout=10) as twilio:
        await twilio.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await twilio.send(json.dumps(start))
        watcher = await watch(mesh, call_id)
        async with watcher:
            reader = asyncio.create_task(mesh.events_until_summary(watcher, f"Twilio call {call_id}"))
            async for chunk in paced(-(-len(inbound) // frame), 0.02):
                await twilio.send(media("inbound", chunk, inbound[chunk * frame : (chunk + 1) * frame]))
                await twilio.send(media("outbound", chunk, outbound[chunk * frame : (chunk + 1) * frame]))
            await twilio.send(json.dumps({"event": "stop", "streamSid": start["streamSid"]}))
            events = await reader

    # A watcher replays the call from its first event: the whole call is here, in order.
    check_call_events(call, events, partials=False)
    assert {e["channel"] for e in events if e["type"] == "score"} == {"agent", "customer"}
    await check_stored(mesh, call, call_id, events)
    stored_call = await asyncio.to_thread(
        _query, mesh, "SELECT tenant, agent, status FROM calls WHERE call_id = %s", call_id
    )
    assert stored_call == [("e2e", "sam", "ended")], stored_call  # customParameters reached the store
