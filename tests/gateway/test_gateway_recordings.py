"""Recordings uploaded to ``POST /v1/sentiment/batch`` (multipart) and gRPC ``AnalyzeRecording``, against
the real mesh: the ASR (Whisper tiny.en) transcribes, the chopper cuts and masks, the scorer scores, the
embedded PostgreSQL stores. Speech from espeak-ng; WAV, FLAC and Ogg written by sox, MP3 by PyAV's LAME.
A mono mix-down of two voices, uploaded with ``speakers``, is split by the ASR into agent and customer.
Bad uploads get a clear error and leave nothing stored."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
import pytest_asyncio

from callsense.config import Config
from callsense.v1 import asr_pb2, audio_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.calls.settings import SessionSettings
from tests.support.audio import SENTENCE_A, SENTENCE_B, require_speech_tools, speak_pcm16, word_error_rate
from tests.support.mesh import MeshServices, RunningGateway, _serve_gateway
from tests.tools.test_analyze_mono import LINES  # the two-voice call the CLI's split is tried on
from tools.demo import synthesize_call
from tools.ports import free_port
from tools.scripted_calls import Turn

pytestmark = pytest.mark.slow

TIMEOUT_S = 120.0
RATE = 16_000
MAX_BYTES = 3_000_000
BATCH = "/v1/sentiment/batch"


def config(mesh: MeshServices, asr_addr: str, db_url: str) -> Config:
    return mesh.config(asr_addr=asr_addr, database_url=db_url)


@pytest_asyncio.fixture
async def gateway(
    mesh_services: MeshServices, asr_addr: str, gateway_db_url: str
) -> AsyncIterator[RunningGateway]:
    settings = SessionSettings(grace_s=0.5, finish_timeout_s=30.0, max_recording_bytes=MAX_BYTES)
    async with _serve_gateway(config(mesh_services, asr_addr, gateway_db_url), settings) as running:
        yield running


def new_call_id() -> str:
    return f"rec-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------- files


def sox(pcm: np.ndarray, folder: Path, name: str, rate: int = RATE) -> bytes:
    """``pcm`` ((frames,) or (frames, channels) int16) written by sox as ``name`` (its suffix picks the
    format); to a file, so that a WAV header holds the real sizes."""
    require_speech_tools()
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    path = folder / name
    raw = ["-t", "raw", "-r", str(rate), "-c", str(channels), "-b", "16", "-e", "signed", "-"]
    subprocess.run(
        ["sox", *raw, str(path)],
        input=pcm.astype("<i2").tobytes(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path.read_bytes()


def mp3(pcm: np.ndarray, rate: int = RATE) -> bytes:
    """Mono ``pcm`` as MP3 (LAME through PyAV: this sox has no MP3 encoder)."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def spoken(text: str = SENTENCE_A) -> np.ndarray:
    pad = np.zeros(RATE // 2, dtype=np.int16)
    return np.concatenate([pad, speak_pcm16(text), pad])


def agent_then_customer() -> np.ndarray:
    """Stereo: the agent (left) speaks, then the customer (right) answers."""
    agent, customer = speak_pcm16(SENTENCE_B), speak_pcm16(SENTENCE_A)
    stereo = np.zeros((len(agent) + len(customer) + 2 * RATE, 2), dtype=np.int16)
    stereo[RATE // 2 : RATE // 2 + len(agent), 0] = agent
    stereo[RATE + len(agent) : RATE + len(agent) + len(customer), 1] = customer
    return stereo


def two_voices_mono() -> np.ndarray:
    """``LINES`` (agent, customer, agent) spoken in the demo's two voices and mixed down to one channel,
    as a phone system records a call."""
    require_speech_tools()
    stereo = synthesize_call([Turn(speaker, text) for speaker, text in LINES]).samples
    mono: np.ndarray = stereo.astype(np.int32).sum(axis=1).clip(-32768, 32767).astype(np.int16)
    return mono


def by_role(segments: list[dict[str, str]]) -> dict[str, str]:
    return {
        role: " ".join(s["text"] for s in segments if s["channel"] == role)
        for role in ("agent", "customer", "mixed")
    }


async def upload(
    http: httpx.AsyncClient,
    call_id: str,
    data: bytes,
    filename: str,
    content_type: str = "audio/wav",
    **fields: str,
) -> httpx.Response:
    return await http.post(
        BATCH,
        data={"call_id": call_id, **fields},
        files={"recording": (filename, data, content_type)},
        timeout=TIMEOUT_S,
    )


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "ogg"])
async def test_a_recording_in_each_format_is_transcribed_scored_and_stored(
    gateway: RunningGateway, tmp_path: Path, kind: str
) -> None:
    pcm = spoken()
    data = mp3(pcm) if kind == "mp3" else sox(pcm, tmp_path, f"call.{kind}")
    call_id = new_call_id()
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=gateway.headers) as http:
        reply = await upload(
            http, call_id, data, f"call.{kind}", f"audio/{kind}", metadata='{"agent": "sam"}'
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    heard = " ".join(t["text"] for t in body["transcript"])
    assert word_error_rate(SENTENCE_A, heard) <= 0.15, heard
    assert all(t["channel"] == "mixed" for t in body["transcript"])
    assert body["utterances"] and all(u["channel"] == "mixed" for u in body["utterances"])
    assert "discount" in " ".join(u["text"] for u in body["utterances"]).lower()
    assert body["stats"]["utterance_count"] == len(body["utterances"]) and body["summary"]
    stored = await gateway.gateway.stores.default.get_call(call_id)
    assert stored is not None and stored.status == "ended" and stored.agent == "sam"
    assert [e.text for e in stored.events] == [u["text"] for u in body["utterances"]]


async def test_stereo_roles_idempotency_conflict_and_the_grpc_mirror(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    data = sox(agent_then_customer(), tmp_path, "stereo.wav")
    call_id = new_call_id()
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=gateway.headers) as http:
        first = await upload(http, call_id, data, "stereo.wav", channel_roles="agent,customer")
        again = await upload(http, call_id, data, "stereo.wav", channel_roles='["agent", "customer"]')
        swapped = await upload(http, call_id, data, "stereo.wav", channel_roles="customer,agent")
    assert first.status_code == 200, first.text
    assert again.json() == first.json()  # the same recording again: same answer, nothing stored twice
    body = first.json()
    said = {
        role: " ".join(u["text"] for u in body["utterances"] if u["channel"] == role)
        for role in ("agent", "customer")
    }
    assert word_error_rate(SENTENCE_B, said["agent"]) <= 0.2, said
    assert word_error_rate(SENTENCE_A, said["customer"]) <= 0.2, said
    assert (
        body["stats"]["customer_avg_sentiment"] is not None
        and body["stats"]["agent_avg_sentiment"] is not None
    )
    stored = await gateway.gateway.stores.default.list_events(call_id)
    assert len(stored) == len(body["utterances"])
    assert swapped.status_code == 409 and swapped.json()["error"]["code"] == "call_conflict", swapped.text

    # gRPC AnalyzeRecording: the same file under the same call_id gives the same utterances.
    async with gateway.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        reply = await stub.AnalyzeRecording(iter(grpc_requests(call_id, data)), timeout=TIMEOUT_S)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AnalyzeRecording(iter(grpc_requests(new_call_id(), b"not audio at all" * 64)))
    assert [(u.utterance.utterance_id, u.utterance.text) for u in reply.utterances] == [
        (u["utterance_id"], u["text"]) for u in body["utterances"]
    ]
    assert reply.summary.utterance_count == len(body["utterances"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a readable audio file" in (caught.value.details() or ""), caught.value.details()


def grpc_requests(
    call_id: str,
    data: bytes,
    roles: tuple[audio_pb2.ChannelRole, ...] = (audio_pb2.AGENT, audio_pb2.CUSTOMER),
    split: int = asr_pb2.SPEAKER_SPLIT_UNSPECIFIED,
) -> list[sentiment_pb2.AnalyzeRecordingRequest]:
    start = sentiment_pb2.RecordingUpload(
        call_id=call_id,
        filename="call.wav",
        channel_roles=list(roles),
        speaker_split=split,  # type: ignore[arg-type]  # an int: the tests send unknown values too
    )
    piece = 64 * 1024
    chunks = [
        sentiment_pb2.AnalyzeRecordingRequest(data=data[i : i + piece]) for i in range(0, len(data), piece)
    ]
    return [sentiment_pb2.AnalyzeRecordingRequest(call_id=call_id, start=start), *chunks]


async def test_bad_uploads_get_clear_errors_and_leave_nothing_stored(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    speech = sox(spoken(), tmp_path, "speech.wav")
    silence = sox(np.zeros(3 * RATE, dtype=np.int16), tmp_path, "silence.wav")
    notes = b"Meeting notes: call the customer back on Tuesday.\n" * 40
    roles, meta = "channel_roles", "metadata"
    # (file name, file bytes or None for no file, other fields, status, code, what the message says)
    cases: list[tuple[str, bytes | None, dict[str, str], int, str, str]] = [
        ("call.wav", None, {}, 422, "invalid_message", "send the call's recording (wav, flac, mp3 or ogg)"),
        ("notes.mp3", notes, {}, 400, "invalid_recording", "notes.mp3: not a readable audio file"),
        ("call.wav", speech[:30], {}, 400, "invalid_recording", "no data chunk (truncated header)"),
        ("call.wav", speech[: len(speech) // 2], {}, 400, "invalid_recording", "the WAV file is truncated"),
        ("call.wav", b"", {}, 400, "invalid_recording", "call.wav is empty"),
        ("call.wav", speech, {roles: "agent,customer"}, 400, "invalid_recording", "for audio of 1 channel"),
        ("call.wav", speech, {roles: "boss"}, 422, "invalid_channel", "'boss' is not a role"),
        ("call.wav", speech, {"speakers": "both"}, 422, "invalid_speakers", "'both' is not a speaker split"),
        ("call.wav", speech, {meta: "{tenant"}, 422, "invalid_metadata", "metadata must be a JSON object"),
        ("call.wav", b"\x00" * (MAX_BYTES + 1), {}, 413, "recording_too_large", f"{MAX_BYTES:,} bytes"),
        ("call.wav", silence, {}, 422, "no_speech", "no speech was recognised in call.wav"),
    ]  # fmt: skip
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=gateway.headers) as http:
        for filename, data, fields, status, code, says in cases:
            call_id = new_call_id()
            if data is None:
                reply = await http.post(BATCH, data={"call_id": call_id}, files={"other": ("x", b"x")})
            else:
                reply = await upload(http, call_id, data, filename, **fields)
            assert reply.status_code == status, (says, reply.text)
            error = reply.json()["error"]
            assert error["code"] == code and says in error["message"], (says, error)
            assert await gateway.gateway.stores.default.get_call(call_id) is None
            if filename == "notes.mp3":  # says which formats are taken
                assert "give a complete wav, flac, mp3 or ogg file" in error["message"], error

        plain = await http.post(BATCH, content=b"hello", headers={"content-type": "text/plain"})
        assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
        assert "multipart/form-data" in plain.json()["error"]["message"]


async def test_recordings_without_an_asr_service_answer_503(
    mesh_services: MeshServices, gateway_db_url: str, tmp_path: Path
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    async with (
        _serve_gateway(config(mesh_services, nowhere, gateway_db_url)) as gateway,
        httpx.AsyncClient(base_url=gateway.http_url, headers=gateway.headers) as http,
    ):
        call_id = new_call_id()
        reply = await upload(http, call_id, sox(spoken(), tmp_path, "call.wav"), "call.wav")
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "stage_failed"
        assert await gateway.gateway.stores.default.get_call(call_id) is None


async def test_the_openapi_document_describes_both_bodies(running_gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=running_gateway.http_url, headers=running_gateway.headers) as http:
        schema = (await http.get("/openapi.json")).json()
    content = schema["paths"][BATCH]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    components = schema["components"]["schemas"]
    for media in content.values():
        assert media["schema"]["$ref"].rsplit("/", 1)[1] in components
    form = components["BatchRecordingForm"]["properties"]
    assert form["recording"]["format"] == "binary"
    assert set(form) >= {"call_id", "metadata", "channel_roles", "speakers"}
    assert form["speakers"]["enum"] == ["auto", "agent-first", "customer-first", "none"]
    assert form["speakers"]["default"] == "auto" and "invalid_speakers" in form["speakers"]["description"]
    assert {"UtteranceIn", "Metadata"} <= set(components)
    json.dumps(schema)  # serialisable as served


async def test_a_mono_two_voice_upload_split_agent_first_scores_each_role(
    audio_gateway: RunningGateway, tmp_path: Path
) -> None:
    data = sox(two_voices_mono(), tmp_path, "mono.wav")
    call_id = new_call_id()
    async with httpx.AsyncClient(base_url=audio_gateway.http_url, headers=audio_gateway.headers) as http:
        reply = await upload(http, call_id, data, "mono.wav", speakers="agent-first")
        # The default (auto) splits a mono file the same way: the same answer, nothing stored twice.
        default = await upload(http, call_id, data, "mono.wav")
        kept = await upload(http, new_call_id(), data, "mono.wav", speakers="none")
    assert reply.status_code == 200, reply.text
    assert default.json() == reply.json(), default.text
    assert kept.status_code == 200, kept.text
    assert {u["channel"] for u in kept.json()["utterances"]} == {"mixed"}, kept.text  # none: not split
    body = reply.json()
    heard, said = by_role(body["transcript"]), by_role(body["utterances"])
    assert {t["channel"] for t in body["transcript"]} == {"agent", "customer"}, heard
    assert {u["channel"] for u in body["utterances"]} == {"agent", "customer"}, said
    # The opener is the agent; each role gets its own lines' words, and none of the other's.
    assert word_error_rate(f"{LINES[0][1]} {LINES[2][1]}", heard["agent"]) <= 0.2, heard
    assert word_error_rate(LINES[1][1], heard["customer"]) <= 0.2, heard
    assert "ridiculous" in said["customer"].lower() and "ridiculous" not in said["agent"].lower(), said
    assert "renewal" in said["agent"].lower() and "renewal" not in said["customer"].lower(), said
    stats = body["stats"]
    assert stats["customer_avg_sentiment"] is not None and stats["agent_avg_sentiment"] is not None
    stored = await audio_gateway.gateway.stores.default.list_events(call_id)
    assert [(e.channel, e.text) for e in stored] == [(u["channel"], u["text"]) for u in body["utterances"]]

    # gRPC AnalyzeRecording takes the same choice as speaker_split: told the customer opens, the
    # same file comes back with the roles the other way round.
    requests = grpc_requests(new_call_id(), data, roles=(), split=asr_pb2.SPEAKER_SPLIT_CUSTOMER_FIRST)
    async with audio_gateway.channel() as channel:
        swapped = await sentiment_pb2_grpc.SentimentStub(channel).AnalyzeRecording(
            iter(requests), timeout=TIMEOUT_S
        )
    roles = {audio_pb2.AGENT: "agent", audio_pb2.CUSTOMER: "customer"}
    other = by_role(
        [{"channel": roles[u.utterance.channel], "text": u.utterance.text} for u in swapped.utterances]
    )
    assert other["agent"] == said["customer"] and other["customer"] == said["agent"], (other, said)


async def test_a_bad_speakers_value_is_refused_before_the_asr(running_gateway: RunningGateway) -> None:
    # No ASR behind this gateway: a good upload would be a 503, so a 4xx here was answered first.
    data = b"RIFF" + b"\x00" * 2048
    cases = [
        ({"speakers": "sideways"}, "'sideways' is not a speaker split; give auto"),
        ({"speakers": "agent-first", "channel_roles": "agent,customer"}, "channel_roles mixed to downmix"),
        ({"speakers": "customer-first", "channel_roles": "customer"}, "the role customer"),
    ]
    async with httpx.AsyncClient(base_url=running_gateway.http_url, headers=running_gateway.headers) as http:
        for fields, says in cases:
            call_id = new_call_id()
            reply = await upload(http, call_id, data, "call.wav", **fields)
            assert reply.status_code == 422, (fields, reply.text)
            error = reply.json()["error"]
            assert error["code"] == "invalid_speakers" and says in error["message"], (fields, error)
            assert await running_gateway.gateway.stores.default.get_call(call_id) is None

    async with running_gateway.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        for split, roles, says in [
            (7, (), "speaker_split 7 is not a SpeakerSplit"),
            (asr_pb2.SPEAKER_SPLIT_AGENT_FIRST, (audio_pb2.AGENT,), "the role agent"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.AnalyzeRecording(
                    iter(grpc_requests(new_call_id(), data, roles=roles, split=split))
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (caught.value.details() or ""), caught.value.details()
