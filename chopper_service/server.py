"""The Chopper gRPC service: a thin layer over ``Segmenter`` (cutting) and ``pii`` (masking).

``Chop`` (bidi stream) reads ChopRequests and answers with Utterances as soon as they are complete,
which with the segmenter's rules is as soon as the final TranscriptEvent they came from has arrived.
Partial events (``is_final`` false) are ignored. The contract has one stream per call, but a stream may
carry several calls, interleaved: each ``call_id`` seen gets its own ``Segmenter``, so utterance ids run
0, 1, 2, ... per call whichever channel spoke. A ``CallEnd`` flushes and closes its call; when every
call seen on the stream has ended, the server ends the stream, as the contract says (a one-call client
need not half-close). A client that half-closes first gets its calls flushed, then the end of the stream.

Bad input, and why it ends the stream: ``Utterance`` has no error field, so the only way to report a bad
message is the stream's status, and skipping it silently would hide a client bug (and lose text). So a
message without ``call_id``, with a malformed one, with neither transcript nor end, whose inner
``call_id`` disagrees with the outer one, or a final with impossible times or text over
``MAX_TEXT_CHARS`` ends the stream with INVALID_ARGUMENT naming the call, the segment and what to fix; a
final for a call that already ended on this stream ends it with FAILED_PRECONDITION, and too many calls on
one stream with RESOURCE_EXHAUSTED. This holds for a stream carrying many calls too: every utterance
already sent stays valid, and because cutting is deterministic, replaying a call's finals on a new stream
yields the same utterances with the same ids, so stored results stay idempotent on
(call_id, utterance_id). Other streams on the server are not affected. (If the contract gains a
per-message error, a multiplexed stream could go on instead.)

Telemetry: each final segment is cut in a ``chopper.segment`` span opened inside
``call_context(call_id)``, so it carries ``call.id`` (a shared stream may carry several calls); metrics are
the cutting time per segment (``callsense.chopper.segment``) and the utterances emitted
(``callsense.chopper.utterances``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import cast

import grpc
import grpc.aio
from opentelemetry import metrics

from callsense import grpc_runtime, telemetry
from callsense.ids import is_valid_call_id
from callsense.tokenization import MAX_TOKENS
from callsense.v1 import asr_pb2, audio_pb2, chopper_pb2, chopper_pb2_grpc, prosody_pb2
from chopper_service.pii import PiiKind
from chopper_service.segmenter import (
    Segmenter,
    SegmenterClosed,
    SegmentError,
    TokenCounter,
    TranscriptSegment,
    Utterance,
    WordTiming,
    default_token_counter,
)

log = logging.getLogger(__name__)

SERVICE_NAME = grpc_runtime.service_name(chopper_pb2, "Chopper")
MAX_TEXT_CHARS = 8192
"""Longer segment texts are refused: cutting runs on the event loop (about 0.2 ms for a typical segment,
up to about 0.3 s for 20,000 characters without punctuation on a busy 2-core machine), and an ASR
segment (at most about 30 s of speech) is well under 1,000 characters. A text-only client should send
one segment per turn."""
MAX_WORDS = 2_000
"""Likewise for the word timings of one segment (30 s of speech is under 150 words)."""
MAX_CALLS_PER_STREAM = 10_000
"""Calls one stream may carry (ended ones included): each costs a little state until the stream ends."""

_PII_KINDS = {
    PiiKind.EMAIL: chopper_pb2.EMAIL,
    PiiKind.PHONE: chopper_pb2.PHONE,
    PiiKind.CARD: chopper_pb2.CARD_NUMBER,
    PiiKind.NATIONAL_ID: chopper_pb2.NATIONAL_ID,
    PiiKind.CARD_SECURITY_CODE: chopper_pb2.CARD_SECURITY_CODE,
    PiiKind.IBAN: chopper_pb2.IBAN,
    PiiKind.DATE_OF_BIRTH: chopper_pb2.DATE_OF_BIRTH,
    PiiKind.ADDRESS: chopper_pb2.POSTAL_ADDRESS,
}


class Rejected(Exception):
    """A message that ends the stream; carries the status code and a message saying what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Metrics:
    segment_ms: metrics.Histogram
    utterances: metrics.Counter


def _metrics() -> _Metrics:
    return _Metrics(
        segment_ms=telemetry.histogram(
            "callsense.chopper.segment", description="Time to mask and cut one final transcript segment"
        ),
        utterances=telemetry.counter("callsense.chopper.utterances", description="Utterances emitted"),
    )


class ChopperServicer(chopper_pb2_grpc.ChopperServicer):
    """Cuts final transcript events into masked utterances, one ``Segmenter`` per call of a stream."""

    def __init__(self, *, count_tokens: TokenCounter | None = None, max_tokens: int = MAX_TOKENS) -> None:
        # Load the tokenizer now, not on the first call: health says SERVING only when a call can be served.
        self._count = count_tokens or default_token_counter()
        self.max_tokens = max_tokens
        self._metrics = _metrics()

    async def Chop(
        self, request_iterator: AsyncIterator[chopper_pb2.ChopRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chopper_pb2.Utterance]:
        stream = _StreamCalls(self)
        try:
            async for request in request_iterator:
                for utterance in stream.handle(request):
                    yield utterance
                if stream.all_ended:
                    return  # the contract: the server closes the stream once end has arrived
            for utterance in stream.flush_open_calls():  # the client half-closed without ending them
                yield utterance
        except Rejected as exc:
            log.warning("Chop stream rejected: %s", exc.message)
            await context.abort(exc.code, exc.message)

    def cut(self, call_id: str, segmenter: Segmenter, event: asr_pb2.TranscriptEvent) -> list[Utterance]:
        """The utterances of one final event, in a span that carries the call id."""
        with (
            telemetry.call_context(call_id),
            telemetry.tracer().start_as_current_span("chopper.segment") as span,
        ):
            started = time.perf_counter()
            try:
                utterances = segmenter.feed(segment_from_event(event))
            except SegmentError as exc:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"call {call_id}: {exc}") from exc
            except SegmenterClosed as exc:
                raise Rejected(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"call {call_id}: {exc}; a call's finals must come before its CallEnd",
                ) from exc
            span.set_attribute("chopper.segment_id", event.segment_id)
            span.set_attribute("chopper.utterances", len(utterances))
            self._metrics.segment_ms.record((time.perf_counter() - started) * 1000.0)
            self._metrics.utterances.add(len(utterances))
        return utterances

    def new_segmenter(self) -> Segmenter:
        return Segmenter(count_tokens=self._count, max_tokens=self.max_tokens)


class _StreamCalls:
    """The calls of one Chop stream: a segmenter per call id, and which calls have ended."""

    def __init__(self, servicer: ChopperServicer) -> None:
        self._servicer = servicer
        self._calls: dict[str, Segmenter] = {}

    @property
    def all_ended(self) -> bool:
        return bool(self._calls) and all(s.closed for s in self._calls.values())

    def handle(self, request: chopper_pb2.ChopRequest) -> list[chopper_pb2.Utterance]:
        call_id = _checked_call_id(request)
        payload = request.WhichOneof("payload")
        if payload == "transcript":
            return self._transcript(call_id, request)
        if payload == "end":
            return self._end(call_id, request)
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"call {call_id}: ChopRequest carries neither transcript nor end; set one of them",
        )

    def flush_open_calls(self) -> list[chopper_pb2.Utterance]:
        out: list[chopper_pb2.Utterance] = []
        for call_id, segmenter in self._calls.items():
            if not segmenter.closed:
                out.extend(_to_proto(call_id, u, None) for u in segmenter.close())
        return out

    def _segmenter(self, call_id: str, request: chopper_pb2.ChopRequest) -> Segmenter:
        segmenter = self._calls.get(call_id)
        if segmenter is None:
            if len(self._calls) >= MAX_CALLS_PER_STREAM:
                raise Rejected(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"call {call_id}: a stream carries at most {MAX_CALLS_PER_STREAM} calls; open a new one",
                )
            segmenter = self._calls[call_id] = self._servicer.new_segmenter()
            if request.HasField("resume"):  # taking over from a chopper that went away
                segmenter.resume(request.resume.next_utterance_id, request.resume.previous_text)
        return segmenter

    def _transcript(self, call_id: str, request: chopper_pb2.ChopRequest) -> list[chopper_pb2.Utterance]:
        event = request.transcript
        if event.call_id and event.call_id != call_id:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"call {call_id}: transcript.call_id is {event.call_id!r}; it must be empty or the same",
            )
        segmenter = self._segmenter(call_id, request)
        if not event.is_final:
            return []  # partials are replaced by their final; only finals are cut
        if len(event.text) > MAX_TEXT_CHARS or len(event.words) > MAX_WORDS:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"call {call_id}: segment {event.segment_id} has {len(event.text)} characters of text and "
                f"{len(event.words)} words; at most {MAX_TEXT_CHARS} and {MAX_WORDS} are accepted: "
                "send one segment per stretch of speech",
            )
        utterances = self._servicer.cut(call_id, segmenter, event)
        prosody = event.prosody if event.HasField("prosody") else None
        return [_to_proto(call_id, u, prosody) for u in utterances]

    def _end(self, call_id: str, request: chopper_pb2.ChopRequest) -> list[chopper_pb2.Utterance]:
        segmenter = self._segmenter(call_id, request)
        if segmenter.closed:
            return []  # a repeated end changes nothing
        return [_to_proto(call_id, u, None) for u in segmenter.close()]


def _checked_call_id(request: chopper_pb2.ChopRequest) -> str:
    call_id = request.call_id
    if not call_id:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT, "ChopRequest.call_id is empty: every message must name its call"
        )
    if not is_valid_call_id(call_id):
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"ChopRequest.call_id {call_id[:140]!r} is not 1..128 characters of [A-Za-z0-9._:-]",
        )
    inner = request.end.call_id if request.WhichOneof("payload") == "end" else ""
    if inner and inner != call_id:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"call {call_id}: end.call_id is {inner!r}; it must be empty or the same",
        )
    return call_id


def segment_from_event(event: asr_pb2.TranscriptEvent) -> TranscriptSegment:
    """The segmenter's view of a final TranscriptEvent."""
    return TranscriptSegment(
        text=event.text,
        channel=event.channel,
        start_ms=event.start_ms,
        end_ms=event.end_ms,
        words=tuple(WordTiming(w.text, w.start_ms, w.end_ms) for w in event.words),
        segment_id=event.segment_id,
    )


def _to_proto(call_id: str, u: Utterance, prosody: prosody_pb2.Prosody | None) -> chopper_pb2.Utterance:
    message = chopper_pb2.Utterance(
        call_id=call_id,
        utterance_id=u.utterance_id,
        channel=cast(audio_pb2.ChannelRole, u.channel),  # the ChannelRole value it came in with
        start_ms=u.start_ms,
        end_ms=u.end_ms,
        text=u.text,
        token_count=u.token_count,
        pii=[chopper_pb2.PiiSpan(kind=_PII_KINDS[s.kind], start=s.start, end=s.end) for s in u.pii],
        previous_text=u.previous_text,
        source_segment_id=u.segment_id,
    )
    if prosody is not None:
        message.prosody.CopyFrom(prosody)
    return message


def chop_offline(
    call_id: str, events: Iterable[asr_pb2.TranscriptEvent], servicer: ChopperServicer | None = None
) -> list[chopper_pb2.Utterance]:
    """What a Chop stream answers to ``events`` (finals, in the order a client sends them) then the call's
    end, computed in this process: ``callsense analyze`` and the tone evaluation cut a recording exactly as
    the service would (masks, ids, prosody carried). Raises Rejected where the stream would end."""
    stream = _StreamCalls(servicer or ChopperServicer())
    utterances: list[chopper_pb2.Utterance] = []
    for event in events:
        utterances += stream.handle(chopper_pb2.ChopRequest(call_id=call_id, transcript=event))
    end = audio_pb2.CallEnd(call_id=call_id, reason="offline")
    return utterances + stream.handle(chopper_pb2.ChopRequest(call_id=call_id, end=end))


def add_chopper(server: grpc.aio.Server, servicer: ChopperServicer) -> list[str]:
    """Register ``servicer`` on ``server``; returns the service name (for ``grpc_runtime.start_server``)."""
    chopper_pb2_grpc.add_ChopperServicer_to_server(servicer, server)
    return [SERVICE_NAME]
