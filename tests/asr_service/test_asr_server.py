"""Asr.Transcribe served by a real grpc.aio server over a real channel: two channels of speech in, partial
and final events out; bad streams end with the status that says what to fix."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable

import grpc
import grpc.aio
import numpy as np
import pytest

from asr_service.audio import mulaw_encode
from asr_service.recognizer import WhisperRecognizer
from asr_service.server import SERVICE_NAME, AsrServicer, add_asr
from asr_service.streaming import SpeculationCounts, StreamingConfig
from callsense import grpc_runtime
from callsense.v1 import asr_pb2, asr_pb2_grpc, audio_pb2
from tests.support.audio import (
    SENTENCE_A,
    SENTENCE_B,
    silence,
    speak,
    to_pcm16_bytes,
    white_noise,
    word_error_rate,
)

CUSTOMER, AGENT, MIXED = audio_pb2.CUSTOMER, audio_pb2.AGENT, audio_pb2.MIXED
PCM16_16K_STEREO = audio_pb2.AudioFormat(encoding=audio_pb2.PCM16, sample_rate_hz=16000, channels=2)


class Asr:
    def __init__(self, stub: asr_pb2_grpc.AsrStub, servicer: AsrServicer) -> None:
        self.stub = stub
        self.servicer = servicer


async def running(recognizer: WhisperRecognizer, max_streams: int = 4) -> AsyncIterator[Asr]:
    servicer = AsrServicer(recognizer, max_streams=max_streams)
    server = await grpc_runtime.start_server(lambda s: add_asr(s, servicer), "127.0.0.1:0")
    channel = grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address)
    try:
        await grpc_runtime.wait_for_serving(channel, SERVICE_NAME)
        yield Asr(asr_pb2_grpc.AsrStub(channel), servicer)
    finally:
        await channel.close()
        await grpc_runtime.stop_server(server, grace_s=0.5)
        await asyncio.to_thread(servicer.shutdown)


@pytest.fixture
async def asr(recognizer: WhisperRecognizer) -> AsyncIterator[Asr]:
    async for a in running(recognizer):
        yield a


def start(
    call_id: str = "call-1",
    fmt: audio_pb2.AudioFormat | None = PCM16_16K_STEREO,
    roles: Iterable[audio_pb2.ChannelRole] = (CUSTOMER, AGENT),
) -> asr_pb2.TranscribeRequest:
    message = audio_pb2.CallStart(call_id=call_id, channel_roles=list(roles))
    if fmt is not None:
        message.format.CopyFrom(fmt)
    return asr_pb2.TranscribeRequest(call_id=call_id, start=message)


def chunk(
    audio: bytes,
    seq: int = 0,
    *,
    call_id: str = "call-1",
    role: audio_pb2.ChannelRole = audio_pb2.CHANNEL_ROLE_UNSPECIFIED,
    ts: int = 0,
) -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest(
        call_id=call_id,
        chunk=audio_pb2.AudioChunk(call_id=call_id, seq=seq, channel=role, timestamp_ms=ts, audio=audio),
    )


def end(call_id: str = "call-1") -> asr_pb2.TranscribeRequest:
    return asr_pb2.TranscribeRequest(call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id, reason="hangup"))


def two_speakers() -> tuple[np.ndarray, np.ndarray]:
    """The customer speaks first; the agent answers while the customer's segment is still closing."""
    customer = np.concatenate([silence(0.5), speak(SENTENCE_A)])
    agent = np.concatenate([silence(len(customer) / 16000 - 0.2), speak(SENTENCE_B)])
    n = max(len(customer), len(agent)) + 16000
    return np.pad(customer, (0, n - len(customer))), np.pad(agent, (0, n - len(agent)))


def interleaved_requests(customer: np.ndarray, agent: np.ndarray) -> list[asr_pb2.TranscribeRequest]:
    data = to_pcm16_bytes(np.stack([customer, agent], axis=1).reshape(-1))
    size = 16000 * 2 * 2 // 10 + 1  # 100 ms and one byte: chunks cut samples and frames in half
    chunks = [chunk(data[i : i + size], seq) for seq, i in enumerate(range(0, len(data), size))]
    return [start(), *chunks, end()]


def per_role_requests(customer: np.ndarray, agent: np.ndarray) -> list[asr_pb2.TranscribeRequest]:
    requests = [start()]
    pcm = {CUSTOMER: to_pcm16_bytes(customer), AGENT: to_pcm16_bytes(agent)}
    size = 16000 * 2 // 20  # 50 ms of one channel
    for seq, i in enumerate(range(0, len(pcm[CUSTOMER]), size)):
        for role in (CUSTOMER, AGENT):
            requests.append(chunk(pcm[role][i : i + size], seq, role=role, ts=i // 32))
    return requests  # no CallEnd: the client half-closes, which also flushes the call


async def transcribe(asr: Asr, requests: list[asr_pb2.TranscribeRequest]) -> list[asr_pb2.TranscriptEvent]:
    call = asr.stub.Transcribe(iter(requests))
    return [e async for e in call]


@pytest.mark.parametrize("layout", ["interleaved", "per-role"])
async def test_two_channels_round_trip(asr: Asr, layout: str) -> None:
    customer, agent = two_speakers()
    build = interleaved_requests if layout == "interleaved" else per_role_requests
    events = await asyncio.wait_for(transcribe(asr, build(customer, agent)), timeout=90)

    assert all(e.call_id == "call-1" for e in events)
    finals = {e.channel: e for e in events if e.is_final}
    assert set(finals) == {CUSTOMER, AGENT} and len([e for e in events if e.is_final]) == 2
    assert word_error_rate(SENTENCE_A, finals[CUSTOMER].text) <= 0.15, finals[CUSTOMER].text
    assert word_error_rate(SENTENCE_B, finals[AGENT].text) <= 0.25, finals[AGENT].text
    for role, final in finals.items():
        assert final.segment_id == 0  # segment ids count per channel
        earlier = [e for e in events[: events.index(final)] if e.channel == role]
        assert all(not e.is_final and e.segment_id == 0 and not e.HasField("prosody") for e in earlier)
        assert final.HasField("prosody") and len(final.prosody.mfcc_mean) == 13
        assert 60 < final.prosody.pitch_mean_hz < 200 and final.prosody.rms_dbfs < 0
        assert final.words and all(
            final.start_ms <= w.start_ms <= w.end_ms <= final.end_ms for w in final.words
        )
        assert 0.0 <= final.no_speech_prob <= 1.0 and final.avg_logprob <= 0.0
    assert finals[CUSTOMER].words[0].start_ms >= 300  # the customer starts after 0.5 s
    agent_starts_ms = (0.5 + len(speak(SENTENCE_A)) / 16000 - 0.2) * 1000
    assert agent_starts_ms - 250 <= finals[AGENT].start_ms <= agent_starts_ms + 300  # 200 ms pre-roll
    assert asr.servicer.scheduler.open_streams == 0  # the slot is released when the stream ends


async def test_each_closed_stream_reports_its_speculative_finals(asr: Asr) -> None:
    # (Read through a spy on the real servicer: setting up telemetry here would instrument gRPC for the
    # rest of the test process, and the e2e tests' clients would then send trace context to Envoy.)
    reported: list[SpeculationCounts] = []
    report = asr.servicer.stream_closed

    def spy(counts: SpeculationCounts) -> None:
        reported.append(counts)
        report(counts)

    asr.servicer.stream_closed = spy  # type: ignore[method-assign]
    await asyncio.wait_for(transcribe(asr, interleaved_requests(*two_speakers())), timeout=90)
    [counts] = reported
    # Each speaker's turn ends in a silence longer than the VAD's, which speculates. Sent faster than
    # real time, the VAD's end comes before the speculation's turn and replaces it (played live, the
    # final takes its decode: test_asr_speculative.py).
    outcomes = counts.outcomes
    assert counts.made >= 2 and sum(outcomes.values()) == counts.made, counts
    assert outcomes["used"] + outcomes["replaced"] >= 2 and counts.ended == 0, counts


async def test_telephone_noise_gives_no_events(asr: Asr) -> None:
    mulaw = mulaw_encode(np.round(white_noise(10.0, level=0.1, rate_hz=8000) * 32767).astype(np.int16))
    fmt = audio_pb2.AudioFormat(encoding=audio_pb2.MULAW, sample_rate_hz=8000, channels=1)
    chunks = [chunk(mulaw[i : i + 160].tobytes(), seq) for seq, i in enumerate(range(0, len(mulaw), 160))]
    events = await transcribe(asr, [start(fmt=fmt, roles=[CUSTOMER]), *chunks, end()])
    assert events == []


async def expect_status(
    asr: Asr, requests: list[asr_pb2.TranscribeRequest], code: grpc.StatusCode, pattern: str
) -> None:
    """The stream ends with ``code``. Written message by message, as the gateway writes (a request
    iterator still sending after the server has answered can end the call INTERNAL on the client's side:
    "Failed execute_batch", a race of the client library, seen once in a clean-clone run)."""
    call = asr.stub.Transcribe()
    for request in requests:
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            break  # the server has ended the stream; its status says why
    else:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()
    assert await call.code() == code, await call.details()
    details = await call.details()
    assert re.search(pattern, details or ""), details


ONE_FRAME = b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("requests", "pattern"),
    [
        ([chunk(ONE_FRAME), end()], "first TranscribeRequest must carry start"),
        ([start(call_id="bad/id")], r"not 1\.\.128 characters"),
        ([start(fmt=None)], "CallStart.format is required"),
        ([start(fmt=audio_pb2.AudioFormat(sample_rate_hz=16000, channels=2))], "encoding 0 is not supported"),
        (
            [start(fmt=audio_pb2.AudioFormat(encoding=audio_pb2.PCM16, sample_rate_hz=4000, channels=2))],
            "4000 Hz is outside 8000..48000",
        ),
        (
            [start(fmt=audio_pb2.AudioFormat(encoding=audio_pb2.MULAW, sample_rate_hz=8000, channels=0))],
            "channel count 0",
        ),
        ([start(roles=[CUSTOMER])], "1 roles for 2 channels"),
        ([start(roles=[AGENT, AGENT])], "repeats a role"),
        ([start(), start()], "a second CallStart"),
        ([start(), chunk(ONE_FRAME, role=MIXED)], "role MIXED, not one of the call's channel_roles"),
        ([start(), chunk(b"\x00" * (16000 * 4 + 4))], r"more than 1000 ms of audio \(64000 bytes\)"),
        ([start(), chunk(ONE_FRAME, call_id="call-2")], "names call 'call-2'"),
        ([start(), asr_pb2.TranscribeRequest(call_id="call-1")], "carries no payload"),
    ],
    ids=[
        "chunk-before-start",
        "bad-call-id",
        "no-format",
        "no-encoding",
        "low-rate",
        "no-channels",
        "roles-mismatch",
        "duplicate-roles",
        "second-start",
        "unknown-role",
        "oversize-chunk",
        "other-call",
        "empty-message",
    ],
)
async def test_bad_streams_are_invalid_argument(
    asr: Asr, requests: list[asr_pb2.TranscribeRequest], pattern: str
) -> None:
    await expect_status(asr, requests, grpc.StatusCode.INVALID_ARGUMENT, pattern)
    # The status goes out as the handler aborts; the slot is released as its clean-up runs just after.
    for _ in range(200):
        if asr.servicer.scheduler.open_streams == 0:
            break
        await asyncio.sleep(0.01)
    assert asr.servicer.scheduler.open_streams == 0


async def test_streams_past_the_cap_are_resource_exhausted(recognizer: WhisperRecognizer) -> None:
    async for asr in running(recognizer, max_streams=1):
        first = asr.stub.Transcribe()
        await first.write(start("first"))
        await first.write(chunk(to_pcm16_bytes(silence(0.1, rate_hz=32000)), call_id="first"))
        for _ in range(200):
            if asr.servicer.scheduler.open_streams == 1:
                break
            await asyncio.sleep(0.01)
        await expect_status(asr, [start("second")], grpc.StatusCode.RESOURCE_EXHAUSTED, "1 streams are open")
        await first.write(end("first"))
        assert [e async for e in first] == []
        assert await transcribe(asr, [start("third"), end("third")]) == []  # the slot is free again


def test_the_batch_of_partials_is_the_configs(recognizer: WhisperRecognizer) -> None:
    """`python -m asr_service --partial-batch N` reaches the scheduler through StreamingConfig."""
    for size in (1, 4):  # 1: off, the default (see StreamingConfig.partial_batch)
        servicer = AsrServicer(recognizer, config=StreamingConfig(partial_batch=size))
        try:
            assert servicer.scheduler.max_batch == size
        finally:
            servicer.shutdown()
