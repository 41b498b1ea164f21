"""The Asr gRPC service: a thin layer over ``streaming.CallTranscriber``.

``Transcribe`` (bidi stream, one call per stream): the first message must be a ``CallStart`` with the
audio format and the role of each channel; then ``AudioChunk``s, either interleaved (all channels, the
chunk's ``channel`` left UNSPECIFIED) or one channel's mono audio (``channel`` names its role); then
``CallEnd``. The service answers with ``TranscriptEvent``s as decodes finish: partials while a segment
is spoken, one final per segment (with words, times and prosody) once its speech ends, and closes the
stream after the last final once ``CallEnd`` (or the client's half-close) has arrived.

Reading requests and writing events run concurrently (a reader task feeds the transcriber while this
handler yields events), so a slow decode never stops audio from being taken in. Audio decoding and the
VAD run on a front-end thread and Whisper on the process's one inference thread: nothing heavy runs on
the event loop.

Status codes (events sent before an error stand):

- INVALID_ARGUMENT: a first message that is not ``CallStart``; a bad call id; a missing or unsupported
  format (encoding, 8000..48000 Hz, 1..8 channels); channel roles that do not match the channel count
  or repeat a role; a second ``CallStart``; a chunk whose role is not one of the call's; a chunk over
  ``max_chunk_ms`` of audio; a message whose ``call_id`` names another call.
- RESOURCE_EXHAUSTED: ``max_streams`` calls are being transcribed already (try another replica).
- INTERNAL: a decode failed.

Telemetry: ``call.id`` on the server span and on everything the call's tasks log; decode time per
kind (``callsense.asr.decode``), segments by outcome (``callsense.asr.segments``) and active streams
(``callsense.asr.streams``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import grpc
import grpc.aio
from opentelemetry import metrics

from asr_service.audio import AudioSpec, Encoding
from asr_service.prosody import ProsodyFeatures
from asr_service.recognizer import WhisperRecognizer
from asr_service.scheduler import InferenceScheduler, StreamLimitError
from asr_service.streaming import CallTranscriber, DecodeResult, StreamingConfig, Transcript
from asr_service.vad import SileroModel, shared_model
from callsense import grpc_runtime, telemetry
from callsense.ids import is_valid_call_id
from callsense.v1 import asr_pb2, asr_pb2_grpc, audio_pb2, prosody_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = grpc_runtime.service_name(asr_pb2, "Asr")
DEFAULT_MAX_STREAMS = 8
DEFAULT_MAX_CHUNK_MS = 1000
"""Chunks are meant to be 20-100 ms; a much larger one is a client bug (or a file sent as one chunk)."""


class Rejected(Exception):
    """A message that ends the stream; carries the status code and a message saying what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> Rejected:
    return Rejected(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class _Metrics:
    decode_ms: metrics.Histogram
    segments: metrics.Counter
    streams: metrics.UpDownCounter


def _metrics() -> _Metrics:
    return _Metrics(
        decode_ms=telemetry.histogram(
            "callsense.asr.decode", description="Wall time of one Whisper decode on the inference thread"
        ),
        segments=telemetry.counter("callsense.asr.segments", description="Decoded segments by outcome"),
        streams=telemetry.up_down_counter("callsense.asr.streams", description="Open Transcribe streams"),
    )


class AsrServicer(asr_pb2_grpc.AsrServicer):
    """Streams calls' audio through the VAD and Whisper; one model and one inference thread shared."""

    def __init__(
        self,
        recognizer: WhisperRecognizer,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        config: StreamingConfig | None = None,
        vad_model: SileroModel | None = None,
        max_chunk_ms: int = DEFAULT_MAX_CHUNK_MS,
    ) -> None:
        self.recognizer = recognizer
        self.config = config or StreamingConfig()
        self.vad_model = vad_model or shared_model()
        self.max_chunk_ms = max_chunk_ms
        self.scheduler = InferenceScheduler(max_streams)
        # One front-end thread (decode, resample, VAD: 2-5 ms of CPU per second of audio per channel)
        # keeps the second core for Whisper.
        self._frontend = ThreadPoolExecutor(1, thread_name_prefix="asr-frontend")
        self._metrics = _metrics()

    async def Transcribe(
        self,
        request_iterator: AsyncIterator[asr_pb2.TranscribeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.TranscriptEvent]:
        call: _Call | None = None
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None:
                return  # the client closed without a word
            call = self._open(first)
            call.start(request_iterator)
            while (event := await call.next_event()) is not None:
                yield event
        except Rejected as exc:
            log.warning("Transcribe rejected: %s", exc.message)
            await context.abort(exc.code, exc.message)
        finally:
            if call is not None:
                call.close()

    def _open(self, first: asr_pb2.TranscribeRequest) -> _Call:
        if first.WhichOneof("payload") != "start":
            raise _invalid("the first TranscribeRequest must carry start (CallStart); send it before audio")
        start = first.start
        call_id = start.call_id or first.call_id
        if not is_valid_call_id(call_id):
            raise _invalid(f"CallStart.call_id {call_id[:140]!r} is not 1..128 characters of [A-Za-z0-9._:-]")
        if first.call_id and first.call_id != call_id:
            raise _invalid(f"call {call_id}: TranscribeRequest.call_id is {first.call_id!r}; use the same id")
        spec = _spec(call_id, start)
        roles = _roles(call_id, start, spec.channels)
        try:
            stream = self.scheduler.open_stream()
        except StreamLimitError as exc:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, f"call {call_id}: {exc}") from exc
        transcriber = CallTranscriber(
            recognizer=self.recognizer,
            stream=stream,
            spec=spec,
            vad_model=self.vad_model,
            config=self.config,
            frontend=self._frontend,
            on_result=self._record,
        )
        self._metrics.streams.add(1)
        with telemetry.call_context(call_id):
            log.info("call %s: transcribing %s", call_id, spec)
        return _Call(self, call_id, spec, roles, transcriber)

    def _record(self, result: DecodeResult) -> None:
        kind = "final" if result.request.is_final else "partial"
        self._metrics.decode_ms.record(result.decode_ms, {"kind": kind})
        outcome = "rejected" if result.rejected else "accepted"
        self._metrics.segments.add(1, {"kind": kind, "outcome": outcome})

    def stream_closed(self) -> None:
        self._metrics.streams.add(-1)

    def shutdown(self) -> None:
        """Stop the inference and front-end threads (after the server has stopped)."""
        self.scheduler.shutdown()
        self._frontend.shutdown(wait=True, cancel_futures=True)


class _Call:
    """One Transcribe stream after its CallStart: reads the rest while events flow out."""

    def __init__(
        self,
        servicer: AsrServicer,
        call_id: str,
        spec: AudioSpec,
        roles: list[audio_pb2.ChannelRole],
        transcriber: CallTranscriber,
    ) -> None:
        self.servicer = servicer
        self.call_id = call_id
        self.spec = spec
        self.roles = roles
        self.transcriber = transcriber
        self._max_bytes = {
            None: spec.bytes_for(servicer.max_chunk_ms / 1000.0),
            "mono": spec.bytes_for(servicer.max_chunk_ms / 1000.0) // spec.channels,
        }
        self._out: asyncio.Queue[asr_pb2.TranscriptEvent | BaseException | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self, request_iterator: AsyncIterator[asr_pb2.TranscribeRequest]) -> None:
        """Start reading the rest of the stream and pumping events out."""
        with telemetry.call_context(self.call_id):  # the tasks inherit the call id
            self._tasks = [
                asyncio.create_task(self._read(request_iterator)),
                asyncio.create_task(self._pump()),
            ]

    async def next_event(self) -> asr_pb2.TranscriptEvent | None:
        """The next event; None after the last; raises Rejected when the stream must end in error."""
        item = await self._out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def _read(self, request_iterator: AsyncIterator[asr_pb2.TranscribeRequest]) -> None:
        try:
            async for request in request_iterator:
                if await self._handle(request):
                    break
            await self.transcriber.finish()  # CallEnd, or the client half-closed
        except Rejected as exc:
            self._out.put_nowait(exc)
        except ValueError as exc:  # from the decoder: audio that does not fit the format
            self._out.put_nowait(_invalid(f"call {self.call_id}: {exc}"))
        except Exception as exc:  # e.g. the transport failed: end the stream rather than hang
            log.warning("call %s: reading the stream failed: %r", self.call_id, exc)
            self._out.put_nowait(Rejected(grpc.StatusCode.UNAVAILABLE, f"call {self.call_id}: {exc!r}"))

    async def _pump(self) -> None:
        try:
            async for transcript in self.transcriber.events():
                self._out.put_nowait(self._event(transcript))
            self._out.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("call %s: decoding failed", self.call_id)
            self._out.put_nowait(
                Rejected(grpc.StatusCode.INTERNAL, f"call {self.call_id}: decoding failed: {exc}")
            )

    async def _handle(self, request: asr_pb2.TranscribeRequest) -> bool:
        """Apply one message; True when it ends the call."""
        if request.call_id and request.call_id != self.call_id:
            raise _invalid(
                f"call {self.call_id}: a message names call {request.call_id[:140]!r}; "
                "one stream carries one call"
            )
        payload = request.WhichOneof("payload")
        if payload == "chunk":
            await self._chunk(request.chunk)
            return False
        if payload == "end":
            return True
        if payload == "start":
            raise _invalid(f"call {self.call_id}: a second CallStart; a stream carries one call")
        raise _invalid(f"call {self.call_id}: TranscribeRequest carries no payload; set start, chunk or end")

    async def _chunk(self, chunk: audio_pb2.AudioChunk) -> None:
        if chunk.call_id and chunk.call_id != self.call_id:
            raise _invalid(
                f"call {self.call_id}: AudioChunk.call_id is {chunk.call_id[:140]!r}; use the same id"
            )
        channel: int | None = None
        if chunk.channel != audio_pb2.CHANNEL_ROLE_UNSPECIFIED:
            if chunk.channel not in self.roles:
                raise _invalid(
                    f"call {self.call_id}: chunk {chunk.seq} is for role "
                    f"{audio_pb2.ChannelRole.Name(chunk.channel)}, not one of the call's channel_roles"
                )
            channel = self.roles.index(chunk.channel)
        limit = self._max_bytes[None if channel is None else "mono"]
        if len(chunk.audio) > limit:
            raise _invalid(
                f"call {self.call_id}: chunk {chunk.seq} holds {len(chunk.audio)} bytes, more than "
                f"{self.servicer.max_chunk_ms} ms of audio ({limit} bytes); send 20-100 ms per chunk"
            )
        await self.transcriber.feed(chunk.audio, channel=channel, timestamp_ms=chunk.timestamp_ms or None)

    def _event(self, t: Transcript) -> asr_pb2.TranscriptEvent:
        event = asr_pb2.TranscriptEvent(
            call_id=self.call_id,
            segment_id=t.segment_id,
            is_final=t.is_final,
            text=t.text,
            words=[
                asr_pb2.Word(text=w.text, start_ms=w.start_ms, end_ms=w.end_ms, probability=w.probability)
                for w in t.words
            ],
            start_ms=t.start_ms,
            end_ms=t.end_ms,
            channel=self.roles[t.channel],
            no_speech_prob=t.no_speech_prob,
            avg_logprob=min(t.avg_logprob, 0.0),
        )
        if t.prosody is not None:
            event.prosody.CopyFrom(prosody_message(t.prosody))
        return event

    def close(self) -> None:
        """Stop the tasks, release the inference slot (queued decodes are cancelled)."""
        if not self._closed:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            self.transcriber.close()
            self.servicer.stream_closed()


def _spec(call_id: str, start: audio_pb2.CallStart) -> AudioSpec:
    if not start.HasField("format"):
        raise _invalid(f"call {call_id}: CallStart.format is required: encoding, sample_rate_hz, channels")
    f = start.format
    try:
        spec = AudioSpec(Encoding(f.encoding), f.sample_rate_hz, f.channels)
    except ValueError:
        raise _invalid(
            f"call {call_id}: audio encoding {f.encoding} is unknown; use PCM16, MULAW or ALAW"
        ) from None
    try:
        spec.validate()
    except ValueError as exc:
        raise _invalid(f"call {call_id}: {exc}") from None
    return spec


def _roles(call_id: str, start: audio_pb2.CallStart, channels: int) -> list[audio_pb2.ChannelRole]:
    # An unknown role is treated like MIXED (audio.proto); a mono call may leave the roles out.
    roles = [r if r != audio_pb2.CHANNEL_ROLE_UNSPECIFIED else audio_pb2.MIXED for r in start.channel_roles]
    if not roles and channels == 1:
        roles = [audio_pb2.MIXED]
    if len(roles) != channels:
        raise _invalid(
            f"call {call_id}: CallStart.channel_roles has {len(roles)} roles for {channels} channels; "
            "give one role per channel, in channel order"
        )
    if len(set(roles)) != len(roles):
        raise _invalid(f"call {call_id}: CallStart.channel_roles repeats a role; give each channel its own")
    return cast(list[audio_pb2.ChannelRole], roles)


def prosody_message(p: ProsodyFeatures) -> prosody_pb2.Prosody:
    return prosody_pb2.Prosody(
        rms_dbfs=p.rms_dbfs,
        pitch_mean_hz=p.pitch_mean_hz,
        pitch_std_hz=p.pitch_std_hz,
        speaking_rate_wps=p.speaking_rate_wps,
        mfcc_mean=list(p.mfcc_mean),
        mfcc_std=list(p.mfcc_std),
        voiced_fraction=p.voiced_fraction,
    )


def add_asr(server: grpc.aio.Server, servicer: AsrServicer) -> list[str]:
    """Register ``servicer`` on ``server``; returns the service name (for ``grpc_runtime.start_server``)."""
    asr_pb2_grpc.add_AsrServicer_to_server(servicer, server)
    return [SERVICE_NAME]
