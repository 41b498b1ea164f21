"""Twilio Media Streams (``WS /v1/twilio/stream/{tenant}``) against the real mesh: the ASR (Whisper
tiny.en), chopper and scorer as subprocesses, embedded PostgreSQL. espeak-ng speech, 8 kHz mu-law, goes in
as Twilio ``media`` messages of 20 ms on the inbound (customer) track, with a little outbound (agent) audio;
a second screen watching the call by id sees the customer's final transcript and its score, which is
stored. Bad messages are reported to watchers as errors and the call goes on.

Every upgrade is signed as Twilio signs it (X-Twilio-Signature with the tenant's auth token); one that is
unsigned, signed with another token or for another URL, for a tenant without a token, or on the old path
without a tenant is refused with 403 before it opens, and a start naming another tenant closes the stream.
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
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from asr_service.audio import mulaw_encode
from callsense.tenants import TenantsConfig, TenantSettings
from callsense.v1 import audio_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.twilio import UNTENANTED_STREAM_PATH, stream_path
from tests.support.audio import SENTENCE_A, normalise_words, speak_pcm16
from tests.support.mesh import MeshServices, RunningGateway, _serve_gateway
from tests.support.twilio import twilio_signature, twilio_signed
from tests.support.ws_client import receive_until_summary, send

pytestmark = pytest.mark.slow

TIMEOUT_S = 60.0
RATE = 8_000
FRAME_BYTES = RATE // 50  # 20 ms of 8 kHz mu-law
MULAW_SILENCE = b"\xff"


ACME_TOKEN = "acme-twilio-auth-token-0123456789abcdef"
BETA_TOKEN = "beta-twilio-auth-token-fedcba9876543210"
TENANTS = TenantsConfig(
    tenants={
        "acme": TenantSettings(twilio_auth_token=ACME_TOKEN),
        "beta": TenantSettings(twilio_auth_token=BETA_TOKEN),
        "no-twilio": TenantSettings(),  # named, but without a Twilio account: its streams are refused
    }
)
"""acme (the test key's tenant) and beta take Twilio streams, each signed with its own account's token."""


@pytest_asyncio.fixture
async def twilio_gateway(
    mesh_services: MeshServices, asr_addr: str, gateway_db_url: str
) -> AsyncIterator[RunningGateway]:
    """Like audio_gateway (the real ASR behind it), with TENANTS' Twilio auth tokens."""
    config = mesh_services.config(asr_addr=asr_addr, database_url=gateway_db_url)
    async with _serve_gateway(config, tenants=TENANTS) as running:
        yield running


def twilio_url(gw: RunningGateway, tenant: str = "acme") -> str:
    return gw.http_url.replace("http://", "ws://") + stream_path(tenant)


def connect_as_twilio(gw: RunningGateway, tenant: str = "acme", token: str = ACME_TOKEN) -> connect:
    """A Media Stream of ``tenant``, its upgrade signed as Twilio signs it with ``token``."""
    url = twilio_url(gw, tenant)
    return connect(url, additional_headers=twilio_signed(token, url))


async def refusal(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and error body of an upgrade the gateway refuses before opening it."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=headers or {}):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]


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


async def test_twilio_call_is_transcribed_scored_and_watched(twilio_gateway: RunningGateway) -> None:
    gw = twilio_gateway
    call_id = f"twilio-test-{uuid.uuid4().hex[:12]}"
    pad = np.zeros(RATE // 2, dtype=np.int16)
    speech = np.concatenate([pad, speak_pcm16(SENTENCE_A, rate_hz=RATE), pad, pad])
    inbound = mulaw_encode(speech).tobytes()
    outbound = MULAW_SILENCE * (FRAME_BYTES * 25)  # half a second of the agent's (silent) line

    async with connect_as_twilio(gw) as twilio:
        await send(twilio, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
        params = {"call_id": call_id, "tenant": "acme", "agent": "sam"}  # the path's tenant: allowed
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


async def test_twilio_bad_input_never_breaks_the_stream(twilio_gateway: RunningGateway) -> None:
    gw = twilio_gateway
    call_sid = "CA" + uuid.uuid4().hex
    call_id = f"twilio-{call_sid}"  # no customParameters.call_id: named after the callSid
    async with connect_as_twilio(gw) as twilio:
        # Before start: nothing to report to (logged only), and the stream stays open.
        await send(twilio, "{not json")
        await send(twilio, media_message("inbound", 0, 0, MULAW_SILENCE * FRAME_BYTES))
        await send(twilio, {"event": "teleport"})
        await send(twilio, {"event": "stop"})
        # A format Twilio never sends: no call starts.
        await send(twilio, start_message(call_sid, ["inbound"], encoding="audio/x-alaw"))
        await send(twilio, start_message(call_sid, ["inbound"], {"agent": "sam"}))  # no tenant: the path's
        await wait_live(gw, call_id)
        session = gw.gateway.registry.get(call_id)
        assert session is not None and session.audio is not None
        assert session.audio.channel_roles == ("customer",)
        assert (session.metadata.tenant, session.metadata.agent) == ("acme", "sam")
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
    assert row is not None and row.tenant == "acme"


async def test_twilio_upgrade_is_refused_unless_signed_by_the_tenants_twilio_account(
    twilio_gateway: RunningGateway,
) -> None:
    """Nothing opens a Twilio stream but a signature of its exact URL made with its tenant's token."""
    gw = twilio_gateway
    acme, beta = twilio_url(gw, "acme"), twilio_url(gw, "beta")
    host = gw.http_url.removeprefix("http://")
    signature = "X-Twilio-Signature"
    refused = {
        "unsigned": await refusal(acme),
        "empty signature": await refusal(acme, {signature: ""}),
        "not a signature": await refusal(acme, {signature: "bm90IGEgc2lnbmF0dXJl"}),
        "another account's token": await refusal(acme, twilio_signed(BETA_TOKEN, acme)),
        # A real signature, replayed on another tenant's path: the URL, tenant included, is what is signed.
        "acme's signature on beta's path": await refusal(beta, twilio_signed(ACME_TOKEN, acme)),
        "signed for another host": await refusal(
            acme, twilio_signed(ACME_TOKEN, acme.replace(host, "calls.example.com"))
        ),
        # Twilio dials (and signs) wss:// only: a ws:// signature, the scheme a plain-http edge might
        # suggest, is not one of Twilio's.
        "signed for ws://": await refusal(acme, {signature: twilio_signature(ACME_TOKEN, acme)}),
    }
    for case, (status, error) in refused.items():
        assert (status, error["code"]) == (403, "forbidden"), (case, status, error)
        assert "X-Twilio-Signature" in error["message"], (case, error)
    message = refused["acme's signature on beta's path"][1]["message"]
    assert f"not a signature of wss://{host}/v1/twilio/stream/beta " in message, message

    # A tenant without a Twilio token, named or not: nothing could prove the stream is Twilio's.
    for tenant in ("no-twilio", "nobody"):
        url = twilio_url(gw, tenant)
        status, error = await refusal(url, twilio_signed(ACME_TOKEN, url))
        assert (status, error["code"]) == (403, "forbidden"), error
        assert "twilio_auth_token_env" in error["message"] and repr(tenant) in error["message"], error

    # The old path named no tenant: refused, naming the path to use.
    old = gw.http_url.replace("http://", "ws://") + UNTENANTED_STREAM_PATH
    status, error = await refusal(old, twilio_signed(ACME_TOKEN, old))
    assert (status, error["code"]) == (403, "forbidden"), error
    assert "/v1/twilio/stream/<tenant>" in error["message"], error
    assert not gw.gateway.registry.live_calls()

    # Signed right, each tenant's stream opens, whatever X-Forwarded-Proto says (Envoy, the edge, sets
    # "http" when a load balancer in front of it terminates TLS); with the URL's port or without it, as
    # Twilio's own validators allow (its signing is not consistent about ports).
    without_port = acme.replace(host, host.split(":")[0])
    for url, headers in (
        (acme, {**twilio_signed(ACME_TOKEN, acme), "X-Forwarded-Proto": "http"}),
        (acme, twilio_signed(ACME_TOKEN, without_port)),
        (beta, twilio_signed(BETA_TOKEN, beta)),
    ):
        async with connect(url, additional_headers=headers) as twilio:
            await send(twilio, {"event": "connected", "protocol": "Call", "version": "1.0.0"})


async def test_a_start_naming_another_tenant_is_refused(twilio_gateway: RunningGateway) -> None:
    """A stream signed for acme cannot start a call of beta: the start is refused, the stream closed."""
    gw = twilio_gateway
    call_id = f"twilio-test-{uuid.uuid4().hex[:12]}"
    params = {"call_id": call_id, "tenant": "beta"}
    async with connect_as_twilio(gw) as twilio:
        await send(twilio, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await send(twilio, start_message("CA" + uuid.uuid4().hex, ["inbound"], params))
        async with asyncio.timeout(10):
            await twilio.wait_closed()
    assert (twilio.close_code, twilio.close_reason) == (1008, "forbidden")
    assert gw.gateway.registry.get(call_id) is None
    assert await gw.gateway.stores.default.get_call(call_id) is None
    assert 'callsense_gateway_input_errors_total{code="forbidden"} 1' in gw.gateway.metrics.render()


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
