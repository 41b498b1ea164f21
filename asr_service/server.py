"""The Asr gRPC service: a thin layer over ``streaming.CallTranscriber`` (live) and ``recording`` (files).

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

A stream that stalls (no message for ``stall_s``, 2 s by default, after audio has come) is taken as
lost audio: each channel's open segment ends there and gets its final at once, so what was said before
the stall is not held back until more audio or the end comes, and the call's clock moves on by
``StreamingConfig.vad.min_silence_ms`` (the silence that would have ended the segment). A client that
keeps sending (silence included) never stalls; Twilio and browsers send every 20-100 ms. (One that sends
its audio in bursts more than ``stall_s`` apart gets its segments cut at each pause.)

``TranscribeRecording`` (a file after the fact; ``recording.py`` does the work): the file's bytes are
spooled (to disk past 8 MB), decoded to 16 kHz once the client half-closes (on a worker thread), each
channel runs through the offline decoder window by window as jobs of the same inference thread, and
each segment goes out as a final ``TranscriptEvent``. A mono recording is first split by speaker
(``RecordingStart.speaker_split``; its diarisation steps are jobs of the same thread). INVALID_ARGUMENT:
no start first, a bad call id, no data, more than ``max_recording_bytes`` or an hour of audio, a file
that is not audio or is truncated, roles that do not fit its channels, a speaker split that cannot
apply; RESOURCE_EXHAUSTED: no stream slot free (as for Transcribe).

Status codes of ``Transcribe`` (events sent before an error stand):

- INVALID_ARGUMENT: a first message that is not ``CallStart``; a bad call id; a missing or unsupported
  format (encoding, 8000..48000 Hz, 1..8 channels); channel roles that do not match the channel count
  or repeat a role; a second ``CallStart``; a chunk whose role is not one of the call's; a chunk over
  ``max_chunk_ms`` of audio; a message whose ``call_id`` names another call.
- RESOURCE_EXHAUSTED: ``max_streams`` calls are being transcribed already (try another replica).
- INTERNAL: a decode failed.

Telemetry: ``call.id`` on the server span and on everything the call's tasks log; decode time per
kind (``callsense.asr.decode``), segments by outcome (``callsense.asr.segments``), decodes per final
(``callsense.asr.final_decodes``), active streams (``callsense.asr.streams``), and each ended stream's
speculative finals by outcome (``callsense.asr.speculations``) and speculative ends
(``callsense.asr.speculative_ends``).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, cast

import grpc
import grpc.aio
from opentelemetry import metrics

from asr_service.audio import AudioSpec, Encoding
from asr_service.decoding import DecodeResult
from asr_service.diarization import SegmentationModel
from asr_service.prosody import ProsodyFeatures
from asr_service.recognizer import WhisperRecognizer
from asr_service.recording import (
    MAX_RECORDING_BYTES,
    OfflineOptions,
    Recording,
    channel_decodes,
    read_recording,
    split_speakers,
    stream_recording,
)
from asr_service.scheduler import InferenceScheduler, StreamHandle, StreamLimitError
from asr_service.streaming import CallTranscriber, SpeculationCounts, StreamingConfig, Transcript
from asr_service.transcribe_file import SUPPORTED
from asr_service.vad import SileroModel, shared_model
from callsense import grpc_runtime, telemetry
from callsense.ids import is_valid_call_id
from callsense.v1 import asr_pb2, asr_pb2_grpc, audio_pb2, prosody_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = grpc_runtime.service_name(asr_pb2, "Asr")
DEFAULT_MAX_STREAMS = 8
DEFAULT_MAX_CHUNK_MS = 1000
"""Chunks are meant to be 20-100 ms; a much larger one is a client bug (or a file sent as one chunk)."""
DEFAULT_STALL_S = 2.0
"""No message for this long after audio has come: the open segments end (see the module docstring)."""
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
"""A recording's bytes stay in memory up to this size, then go to a temporary file."""
_ROLE_NAMES = {
    audio_pb2.CUSTOMER: "customer",
    audio_pb2.AGENT: "agent",
    audio_pb2.MIXED: "mixed",
    audio_pb2.CHANNEL_ROLE_UNSPECIFIED: "mixed",  # audio.proto: unknown is treated like MIXED
}
_ROLES_BY_NAME = {"customer": audio_pb2.CUSTOMER, "agent": audio_pb2.AGENT, "mixed": audio_pb2.MIXED}
_SPEAKER_SPLITS = {
    asr_pb2.SPEAKER_SPLIT_UNSPECIFIED: "auto",
    asr_pb2.SPEAKER_SPLIT_NONE: "none",
    asr_pb2.SPEAKER_SPLIT_AGENT_FIRST: "agent-first",
    asr_pb2.SPEAKER_SPLIT_CUSTOMER_FIRST: "customer-first",
}


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
    decodes_per_final: metrics.Histogram
    streams: metrics.UpDownCounter
    speculations: metrics.Counter
    speculative_ends: metrics.Counter


def _metrics() -> _Metrics:
    return _Metrics(
        decode_ms=telemetry.histogram(
            "callsense.asr.decode", description="Wall time of one Whisper decode on the inference thread"
        ),
        segments=telemetry.counter(
            "callsense.asr.segments", description="Decoded segments by kind and outcome (see _record)"
        ),
        decodes_per_final=telemetry.histogram(
            "callsense.asr.final_decodes",
            description="Whisper decodes one final took (context retry and temperature fallback included)",
            unit="1",
            boundaries=(1, 2, 3, 4, 5, 6, 7),
        ),
        streams=telemetry.up_down_counter("callsense.asr.streams", description="Open Transcribe streams"),
        speculations=telemetry.counter(
            "callsense.asr.speculations",
            description="Speculative finals of ended streams by outcome: used (a final took its decode), "
            "committed (a pause after a finished sentence: the partials after it start from there), "
            "wasted (decoded for nothing: a pause), replaced (never decoded: dropped or skipped)",
        ),
        speculative_ends=telemetry.counter(
            "callsense.asr.speculative_ends",
            description="Segments of ended streams that the speculative end ended (speculative_end_ms)",
        ),
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
        stall_s: float | None = DEFAULT_STALL_S,
        max_recording_bytes: int = MAX_RECORDING_BYTES,
        recording_model: Any = None,
        segmentation: SegmentationModel | None = None,
    ) -> None:
        self.recognizer = recognizer
        # The speaker segmentation model for mono recordings split by speaker (None: the process's
        # shared one, loaded the first time a recording needs it).
        self.segmentation = segmentation
        # faster-whisper's WhisperModel for recordings: by default the live streams' own (one copy per
        # process); used only from the inference threads (each decoding step is one of their jobs).
        self.recording_model = recording_model or recognizer.whisper_model
        self.config = config or StreamingConfig()
        self.vad_model = vad_model or shared_model()
        self.max_chunk_ms = max_chunk_ms
        self.stall_s = stall_s
        self.max_recording_bytes = max_recording_bytes
        self.scheduler = InferenceScheduler(
            max_streams, workers=recognizer.config.workers, max_batch=self.config.partial_batch
        )
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

    async def TranscribeRecording(
        self,
        request_iterator: AsyncIterator[asr_pb2.RecordingChunk],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.TranscriptEvent]:
        stream: StreamHandle | None = None
        try:
            upload = await _receive_recording(request_iterator, self.max_recording_bytes)
            with telemetry.call_context(upload.call_id):
                recording = await _decode_upload(upload)
                model = self.recording_model
                stream = self._open_stream(upload.call_id)
                recording = await split_speakers(recording, stream, self.segmentation)
                log.info(
                    "call %s: transcribing a recording of %.1f s (%s%s)",
                    upload.call_id,
                    recording.duration_s,
                    ", ".join(recording.roles),
                    " split by speaker" if recording.split else "",
                )
                options = OfflineOptions(language=self.recognizer.config.language)
                roles = [_ROLES_BY_NAME[r] for r in recording.roles]
                async for t in stream_recording(channel_decodes(model, recording, options), stream):
                    self._metrics.segments.add(1, {"kind": "recording", "outcome": "accepted"})
                    yield transcript_message(upload.call_id, roles[t.channel], t)
        except Rejected as exc:
            log.warning("TranscribeRecording rejected: %s", exc.message)
            await context.abort(exc.code, exc.message)
        except Exception as exc:  # a fault of the decoder, not of the file: the client cannot fix it
            log.exception("TranscribeRecording failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"decoding the recording failed: {exc}")
        finally:
            if stream is not None:
                stream.close(cancel=True)

    def _open_stream(self, call_id: str) -> StreamHandle:
        try:
            return self.scheduler.open_stream()
        except StreamLimitError as exc:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, f"call {call_id}: {exc}") from exc

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
        stream = self._open_stream(call_id)
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
        # "unheard": a final of a second or more of speech that no decode could transcribe (sent
        # empty with its reason); "rejected": non-speech, or a partial, dropped.
        outcome = "unheard" if result.unheard else "rejected" if result.rejected else "accepted"
        self._metrics.segments.add(1, {"kind": kind, "outcome": outcome})
        if result.request.is_final:
            self._metrics.decodes_per_final.record(result.attempts)

    def stream_closed(self, speculations: SpeculationCounts) -> None:
        self._metrics.streams.add(-1)
        for outcome, count in speculations.outcomes.items():
            self._metrics.speculations.add(count, {"outcome": outcome})
        self._metrics.speculative_ends.add(speculations.ended)

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
        self._heard_ms = [0.0] * spec.channels
        """Per channel, the call time up to which audio has come (for the stall rule)."""

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
            requests = aiter(request_iterator)
            while (request := await self._next_request(requests)) is not None:
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

    async def _next_request(
        self, requests: AsyncIterator[asr_pb2.TranscribeRequest]
    ) -> asr_pb2.TranscribeRequest | None:
        """The next message (None once the client half-closed). Once audio has come, a wait longer
        than the stall limit ends the open segments, once per stall; the read itself is never
        cancelled (a message must not be lost to a timeout)."""
        reading = asyncio.ensure_future(anext(requests, None))
        stall_s = self.servicer.stall_s
        if stall_s is not None and any(self._heard_ms):
            done, _ = await asyncio.wait({reading}, timeout=stall_s)
            if not done:
                await self._on_stall()
        return await reading

    async def _on_stall(self) -> None:
        """Audio stopped coming: take it as lost audio, which ends each channel's open segment."""
        gap_ms = max(self.transcriber.config.vad.min_silence_ms, self.transcriber.config.gap_tolerance_ms + 1)
        log.info(
            "call %s: no audio for %.1f s; ending the open segments", self.call_id, self.servicer.stall_s
        )
        for channel, heard_ms in enumerate(self._heard_ms):
            if heard_ms:
                self._heard_ms[channel] = heard_ms + gap_ms
                await self.transcriber.feed(b"", channel=channel, timestamp_ms=int(self._heard_ms[channel]))

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
        self._count_heard(chunk, channel)

    def _count_heard(self, chunk: audio_pb2.AudioChunk, channel: int | None) -> None:
        spec = self.spec
        unit = spec.frame_bytes if channel is None else spec.bytes_per_sample
        chunk_ms = len(chunk.audio) / unit * 1000.0 / spec.sample_rate_hz
        for c in range(spec.channels) if channel is None else (channel,):
            self._heard_ms[c] = max(self._heard_ms[c], float(chunk.timestamp_ms)) + chunk_ms

    def _event(self, t: Transcript) -> asr_pb2.TranscriptEvent:
        return transcript_message(self.call_id, self.roles[t.channel], t)

    def close(self) -> None:
        """Stop the tasks, release the inference slot (queued decodes are cancelled)."""
        if not self._closed:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            self.transcriber.close()
            self.servicer.stream_closed(self.transcriber.speculation_counts())


def transcript_message(call_id: str, role: audio_pb2.ChannelRole, t: Transcript) -> asr_pb2.TranscriptEvent:
    """A transcript as the contract's TranscriptEvent of the channel whose role is ``role``."""
    event = asr_pb2.TranscriptEvent(
        call_id=call_id,
        segment_id=t.segment_id,
        is_final=t.is_final,
        text=t.text,
        words=[
            asr_pb2.Word(text=w.text, start_ms=w.start_ms, end_ms=w.end_ms, probability=w.probability)
            for w in t.words
        ],
        start_ms=t.start_ms,
        end_ms=t.end_ms,
        channel=role,
        no_speech_prob=t.no_speech_prob,
        avg_logprob=min(t.avg_logprob, 0.0),
        unheard_reason=t.unheard_reason,
    )
    if t.prosody is not None:
        event.prosody.CopyFrom(prosody_message(t.prosody))
    return event


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


@dataclass
class _Upload:
    """A recording's first message and its bytes, spooled."""

    call_id: str
    name: str
    """How messages name the file: its filename, else "the recording"."""
    roles: Sequence[str] | None
    file: IO[bytes]
    speakers: str = "auto"
    """How a recording heard as one channel is split by speaker (``recording.SPEAKER_SPLITS``)."""


async def _receive_recording(
    request_iterator: AsyncIterator[asr_pb2.RecordingChunk], max_bytes: int
) -> _Upload:
    """Read a TranscribeRecording request stream to its end; Rejected when it cannot be used."""
    requests = aiter(request_iterator)
    first = await anext(requests, None)
    if first is None or first.WhichOneof("payload") != "start":
        raise _invalid("the first RecordingChunk must carry start (RecordingStart); send it before the data")
    start = first.start
    call_id = start.call_id or first.call_id
    if not is_valid_call_id(call_id):
        raise _invalid(
            f"RecordingStart.call_id {call_id[:140]!r} is not 1..128 characters of [A-Za-z0-9._:-]"
        )
    upload = _Upload(
        call_id=call_id,
        name=start.filename[:200] or "the recording",
        roles=[_ROLE_NAMES.get(r, "mixed") for r in start.channel_roles] or None,
        speakers=_SPEAKER_SPLITS.get(start.speaker_split, "auto"),  # an unknown value: the default
        file=tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES),  # noqa: SIM115 (closed by the caller)
    )
    try:
        await _spool(upload, requests, max_bytes)
    except BaseException:
        upload.file.close()
        raise
    return upload


async def _spool(upload: _Upload, requests: AsyncIterator[asr_pb2.RecordingChunk], max_bytes: int) -> None:
    size = 0
    async for message in requests:
        if message.call_id and message.call_id != upload.call_id:
            raise _invalid(
                f"call {upload.call_id}: a message names call {message.call_id[:140]!r}; "
                "one stream carries one recording"
            )
        if message.WhichOneof("payload") != "data":
            raise _invalid(f"call {upload.call_id}: after start, every RecordingChunk carries data")
        size += len(message.data)
        if size > max_bytes:
            raise _invalid(
                f"call {upload.call_id}: {upload.name} is larger than {max_bytes:,} bytes, the most this "
                "service takes; send a compressed file (mp3, ogg, flac) or split the call"
            )
        await asyncio.to_thread(upload.file.write, message.data)
    if size == 0:
        raise _invalid(
            f"call {upload.call_id}: {upload.name} is empty: no data followed start; send a {SUPPORTED} file"
        )


async def _decode_upload(upload: _Upload) -> Recording:
    """Decode a spooled recording on a worker thread; Rejected, saying what to fix, when it cannot be used."""
    with upload.file:
        try:
            return await asyncio.to_thread(
                read_recording, upload.file, upload.name, upload.roles, speakers=upload.speakers
            )
        except ValueError as exc:
            raise _invalid(f"call {upload.call_id}: {exc}") from None


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
