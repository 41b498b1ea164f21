"""Mono recordings split by speaker (issue 14) with the real segmentation model (pyannote segmentation-3.0,
ONNX) and Whisper tiny.en: a scripted call spoken in two espeak-ng voices and summed to one channel,
through a real Asr.TranscribeRecording; the shared stereo fixture and the LJSpeech/RAVDESS calls of
``callsense evaluate-diarization`` mixed down to mono.

Thresholds are what was measured (README, "Mono recordings") less a margin: the scripted calls' words
land on the right role 99-100 % of the time (asserted: 95 %), their DER is 0.0-0.7 % (asserted: 3 %).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from asr_service.diarization import SegmentationModel
from asr_service.recognizer import WhisperRecognizer
from asr_service.server import AsrServicer
from asr_service.transcribe_file import load_offline_model
from callsense.v1 import asr_pb2, asr_pb2_grpc, audio_pb2
from tests.asr_service.test_asr_recording import (
    agent_then_customer,
    recording_requests,
    serving_asr,
    wav_bytes,
)
from tests.support.audio import SENTENCE_A, require_speech_tools, speak_pcm16, word_error_rate
from tools import diarization_eval

pytestmark = pytest.mark.slow

CUSTOMER, AGENT, MIXED = audio_pb2.CUSTOMER, audio_pb2.AGENT, audio_pb2.MIXED
RATE = 16_000
MIN_WORDS_RIGHT = 0.95
MAX_SCRIPTED_DER = 0.03


@pytest.fixture
async def asr(recognizer: WhisperRecognizer) -> AsyncIterator[tuple[asr_pb2_grpc.AsrStub, AsrServicer]]:
    async with serving_asr(recognizer, max_recording_bytes=8_000_000) as served:
        yield served


async def transcribe(
    stub: asr_pb2_grpc.AsrStub, requests: list[asr_pb2.RecordingChunk]
) -> list[asr_pb2.TranscriptEvent]:
    return [e async for e in stub.TranscribeRecording(iter(requests), timeout=600)]


def mono_requests(data: bytes, split: asr_pb2.SpeakerSplit, **kwargs: Any) -> list[asr_pb2.RecordingChunk]:
    requests = recording_requests(data, **kwargs)
    requests[0].start.speaker_split = split
    return requests


@pytest.fixture(scope="module")
def scripted_call() -> diarization_eval.EvalCall:
    require_speech_tools()
    return next(c for c in diarization_eval.scripted_calls() if c.name == "scripted-sours-at-price")


async def test_a_mono_two_voice_call_gives_each_role_its_words(
    asr: tuple[asr_pb2_grpc.AsrStub, AsrServicer], scripted_call: diarization_eval.EvalCall
) -> None:
    stub, servicer = asr
    mono = np.round(scripted_call.mono * 32768).clip(-32768, 32767).astype(np.int16)
    events = await transcribe(stub, recording_requests(wav_bytes(mono)))  # the default: split

    assert {e.channel for e in events} == {AGENT, CUSTOMER}
    truth = diarization_eval.reference(scripted_call)
    roles = {AGENT: "agent", CUSTOMER: "customer"}
    words = [(roles[e.channel], w) for e in events for w in e.words]
    right = [role in diarization_eval.true_roles(truth, w.start_ms, w.end_ms) for role, w in words]
    wrong = [
        f"{role}: {w.text!r} at {w.start_ms} ms" for (role, w), ok in zip(words, right, strict=True) if not ok
    ]
    assert len(words) > 150 and sum(right) / len(words) >= MIN_WORDS_RIGHT, wrong
    # Events in time order; ids from 0 per role; each with its own words, times and prosody.
    assert [e.start_ms for e in events] == sorted(e.start_ms for e in events)
    for role in (AGENT, CUSTOMER):
        ids = [e.segment_id for e in events if e.channel == role]
        assert ids == list(range(len(ids)))
    for e in events:
        assert e.text and e.words and e.start_ms <= e.words[0].start_ms <= e.words[-1].end_ms <= e.end_ms
        assert e.HasField("prosody") and len(e.prosody.mfcc_mean) == 13
    customer = " ".join(e.text for e in events if e.channel == CUSTOMER).lower()
    assert "budget" in customer or "over" in customer, customer  # the customer cools at the price
    assert servicer.scheduler.open_streams == 0


async def test_mono_split_options_and_refusals(asr: tuple[asr_pb2_grpc.AsrStub, AsrServicer]) -> None:
    stub, _ = asr
    one_voice = np.concatenate(
        [np.zeros(RATE // 2, np.int16), speak_pcm16(SENTENCE_A), np.zeros(RATE // 2, np.int16)]
    )
    data = wav_bytes(one_voice)
    for split in (asr_pb2.SPEAKER_SPLIT_UNSPECIFIED, asr_pb2.SPEAKER_SPLIT_AGENT_FIRST):
        events = await transcribe(stub, mono_requests(data, split))  # one voice: nobody to split
        assert events and {e.channel for e in events} == {MIXED}
        assert word_error_rate(SENTENCE_A, " ".join(e.text for e in events)) <= 0.15
    kept = await transcribe(stub, mono_requests(data, asr_pb2.SPEAKER_SPLIT_NONE))
    assert {e.channel for e in kept} == {MIXED}

    stereo = wav_bytes(agent_then_customer())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await transcribe(stub, mono_requests(stereo, asr_pb2.SPEAKER_SPLIT_CUSTOMER_FIRST))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mixed' to downmix" in (caught.value.details() or ""), caught.value.details()


@pytest.fixture(scope="module")
def whisper() -> Any:
    return load_offline_model()


@pytest.fixture(scope="module")
def segmentation() -> SegmentationModel:
    return SegmentationModel()


def test_the_scripted_call_mixed_down_customer_first(
    scripted_call: diarization_eval.EvalCall, segmentation: SegmentationModel
) -> None:
    # Said to open with the customer, the same call comes back with the roles swapped.
    from dataclasses import replace

    swapped = diarization_eval.evaluate(replace(scripted_call, opener="customer"), segmentation=segmentation)
    assert swapped.der.rate <= MAX_SCRIPTED_DER and swapped.role.rate > 0.9


def test_the_stereo_fixture_mixed_down(
    shared_data: Path, segmentation: SegmentationModel, whisper: Any
) -> None:
    try:
        (call,) = diarization_eval.stereo_fixture(shared_data)
    except diarization_eval.CallsAbsent as exc:
        pytest.skip(f"SHARED DATA ABSENT: {exc}")
    result = diarization_eval.evaluate(call, segmentation=segmentation, whisper=whisper)
    print(f"stereo fixture: DER {result.der.rate:.3f}, words right {result.words_right}/{result.words}")
    # Two speakers who talk over each other for two of five seconds: both found, the opener the agent.
    assert result.roles_found and result.role.rate <= 0.05
    assert result.words >= 15 and result.word_accuracy >= 0.9


@pytest.mark.evaluation
def test_real_voices_man_against_woman(shared_data: Path, segmentation: SegmentationModel) -> None:
    try:
        calls = diarization_eval.real_calls(shared_data)
    except diarization_eval.CallsAbsent as exc:
        pytest.skip(f"SHARED DATA ABSENT: {exc}")
    results = {c.name: diarization_eval.evaluate(c, segmentation=segmentation) for c in calls}
    print({name: (round(r.der.rate, 3), round(r.role.rate, 3)) for name, r in results.items()})
    # Measured 9.0, 5.1 and 7.3 % (the hold tied back by voice); two women and two men of RAVDESS are
    # not told apart (README, "Mono recordings": what is left).
    for name in ("real-man-01", "real-man-05", "real-hold-man-03"):
        assert results[name].role.rate <= 0.15, (name, results[name].role)
