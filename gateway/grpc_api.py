"""The public gRPC API, ``callsense.v1.Sentiment``: the WebSocket API's mirror for backend clients.

Thin on purpose: every method maps protobuf to the same ``Gateway`` / CallSession machinery the
WebSocket uses. Problems before a call exists (first message not a start, a missing or malformed
call_id, bad metadata, a call driven elsewhere) end the RPC with a status (INVALID_ARGUMENT, ...);
problems with one message of a running call (empty or oversized text, a message after end) become a
non-fatal ``Error`` event and the call goes on, exactly like the WebSocket's error events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any, NoReturn

import grpc
import grpc.aio
import psycopg
import psycopg_pool
from google.protobuf.timestamp_pb2 import Timestamp

from callsense.config import EDGE_HEADER, JWT_PAYLOAD_HEADER
from callsense.domain import CallStatistics, UtteranceScore, compute_call_stats
from callsense.telemetry import call_context
from callsense.v1 import audio_pb2, chopper_pb2, scorer_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.auth.access import check_may_see, forbidden, may_see, owned_call
from gateway.auth.credentials import Principal
from gateway.calls.errors import ErrorCode, InputError, NotFoundError
from gateway.calls.events import (
    CallOutcome,
    CallUpdate,
    LiveBadge,
    LiveCue,
    LiveError,
    LiveProvisional,
    LiveScore,
    LiveSummary,
    LiveTranscript,
    client_error,
)
from gateway.calls.fanout import Subscription
from gateway.calls.inputs import (
    CHANNELS,
    AudioInputFormat,
    CallInfo,
    UtteranceInput,
    channel_from_role,
    validate_audio_format,
    validate_call_id,
    validate_metadata,
    validate_utterance,
)
from gateway.calls.registry import CallDriver
from gateway.calls.service import Gateway
from gateway.live import BadgeState
from gateway.recording import (
    Recording,
    analyze_recording,
    check_speakers,
    parse_channel_roles,
    speakers_of_split,
    spool,
)
from gateway.store import CallRow

log = logging.getLogger(__name__)

_LABELS = {"negative": scorer_pb2.NEGATIVE, "neutral": scorer_pb2.NEUTRAL, "positive": scorer_pb2.POSITIVE}
_BADGE_STATES = {
    BadgeState.GREEN: sentiment_pb2.GREEN,
    BadgeState.AMBER: sentiment_pb2.AMBER,
    BadgeState.RED: sentiment_pb2.RED,
}
_STATUS = {"live": sentiment_pb2.ACTIVE, "ended": sentiment_pb2.COMPLETED, "failed": sentiment_pb2.FAILED}


class SentimentServicer(sentiment_pb2_grpc.SentimentServicer):
    """Serves one Gateway (shared with the HTTP app of the same process)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def StreamCall(
        self,
        request_iterator: AsyncIterator[sentiment_pb2.StreamCallRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[sentiment_pb2.CallEvent]:
        caller = await self._caller(context)
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return  # the client opened and closed without a word: nothing to do
        call_id, given, audio = await _start_of(first, context)
        metadata = await _checked(context, partial(owned_call, caller), given)
        live = self._gateway.registry.get(call_id)
        if live is not None:  # a reconnect: only someone who may see the call takes it back
            await _checked(context, partial(_check_session, caller, call_id), live.metadata)
        driver = CallDriver(self._gateway.registry)
        with call_context(call_id):
            try:
                session, resumed = await driver.start(call_id, metadata, audio)
            except InputError as err:
                await _abort(context, err)
            subscription = session.subscribe(replay=resumed)
            reader = _StreamReader(driver, call_id, subscription)
            reading = reader.start(request_iterator)
        try:
            async for event in subscription:
                yield event_proto(event)
        finally:
            reading.cancel()
            driver.disconnect()  # the client vanished before the end: the grace period takes over
            session.unsubscribe(subscription)

    async def WatchCall(
        self, request: sentiment_pb2.WatchCallRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[sentiment_pb2.CallEvent]:
        caller = await self._caller(context)
        call_id = await _checked(context, validate_call_id, request.call_id)
        live = self._gateway.registry.get(call_id)
        if live is not None:
            await _checked(context, partial(_check_session, caller, call_id), live.metadata)
        try:
            subscription = self._gateway.registry.subscribe(call_id)
        except NotFoundError as exc:
            await _abort_with(context, grpc.StatusCode.NOT_FOUND, str(exc))
        try:
            async for event in subscription:
                yield event_proto(event)
        finally:
            session = self._gateway.registry.get(call_id)
            if session is not None:
                session.unsubscribe(subscription)

    async def AnalyzeBatch(
        self, request: sentiment_pb2.AnalyzeBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sentiment_pb2.AnalyzeBatchResponse:
        caller = await self._caller(context)
        call_id = await _checked(context, validate_call_id, request.call_id)
        metadata = await _checked(context, metadata_of, request.metadata)
        metadata = await _checked(context, partial(owned_call, caller), metadata)
        utterances = await _checked(context, _utterances_of, request.utterances)
        with call_context(call_id):
            try:
                result = await self._gateway.analyze_batch(call_id, metadata, utterances)
            except InputError as err:
                await _abort(context, err)
            except grpc.aio.AioRpcError as exc:
                log.warning("batch %s: stage failed: %s %s", call_id, exc.code().name, exc.details())
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"a pipeline stage failed: {exc.code().name}"
                )
        return sentiment_pb2.AnalyzeBatchResponse(
            call_id=call_id,
            utterances=[scored_utterance_proto(e) for e in result.events],
            summary=summary_proto(result.summary.stats, result.summary.lines, result.summary.objection_tags),
        )

    async def AnalyzeRecording(
        self,
        request_iterator: AsyncIterator[sentiment_pb2.AnalyzeRecordingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> sentiment_pb2.AnalyzeBatchResponse:
        caller = await self._caller(context)
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "start":
            await _abort_with(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first AnalyzeRecordingRequest must carry start (RecordingUpload); send it first",
            )
        start = first.start
        call_id = await _checked(context, validate_call_id, start.call_id or first.call_id)
        metadata = await _checked(context, metadata_of, start.metadata)
        metadata = await _checked(context, partial(owned_call, caller), metadata)
        roles = await _checked(
            context, parse_channel_roles, [channel_from_role(r) for r in start.channel_roles]
        )
        speakers = await _checked(context, speakers_of_split, start.speaker_split)
        await _checked(context, partial(check_speakers, speakers), roles)  # before the upload is read
        with call_context(call_id):
            try:
                file = await spool(_recording_bytes(requests), self._gateway.settings.max_recording_bytes)
                with file:
                    recording = Recording(file, start.filename, start.content_type, roles, speakers)
                    result = await analyze_recording(self._gateway, call_id, metadata, recording)
            except InputError as err:
                await _abort(context, err)
            except grpc.aio.AioRpcError as exc:
                log.warning("recording %s: stage failed: %s %s", call_id, exc.code().name, exc.details())
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"a pipeline stage failed: {exc.code().name}"
                )
        batch = result.batch
        return sentiment_pb2.AnalyzeBatchResponse(
            call_id=call_id,
            utterances=[scored_utterance_proto(e) for e in batch.events],
            summary=summary_proto(batch.summary.stats, batch.summary.lines, batch.summary.objection_tags),
        )

    async def GetCall(
        self, request: sentiment_pb2.GetCallRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sentiment_pb2.CallRecord:
        caller = await self._caller(context)
        call_id = await _checked(context, validate_call_id, request.call_id)
        try:
            row = await self._gateway.get_call(call_id)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):  # down or restarting: retry later
            await _abort_with(
                context, grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry later"
            )
        if row is None:
            await _abort_with(context, grpc.StatusCode.NOT_FOUND, f"no call with id {call_id!r}")
        if not may_see(caller, row.tenant, row.team, row.agent):
            await _abort(context, forbidden(f"call {call_id!r} is not reachable with this key"))
        return call_record_proto(row)

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The key in the call's ``authorization`` metadata ("Bearer csk_..."), or the claims of a JWT that
        Envoy validated and forwarded as metadata (gateway/auth/edge.py); UNAUTHENTICATED without."""
        metadata = dict(context.invocation_metadata() or ())

        def text(key: str) -> str | None:
            value = metadata.get(key)
            return value if isinstance(value, str) else None

        try:
            return await self._gateway.authenticator.authenticate(
                text("authorization"), None, edge=text(EDGE_HEADER), jwt_payload=text(JWT_PAYLOAD_HEADER)
            )
        except InputError as err:
            status = grpc.StatusCode.UNAVAILABLE if err.code == ErrorCode.DATABASE_UNAVAILABLE else err.status
            await _abort_with(context, status, err.message)


def _check_session(caller: Principal, call_id: str, info: CallInfo) -> None:
    check_may_see(caller, info.tenant, info.team, info.agent, call_id)


async def _recording_bytes(
    requests: AsyncIterator[sentiment_pb2.AnalyzeRecordingRequest],
) -> AsyncIterator[bytes]:
    async for message in requests:
        if message.WhichOneof("payload") != "data":
            raise InputError(
                ErrorCode.INVALID_MESSAGE, "after start, every AnalyzeRecordingRequest carries data"
            )
        yield message.data


def add_to_server(gateway: Gateway) -> Any:
    """For ``grpc_runtime.start_server``: registers the servicer, returns its service name."""

    def add(server: grpc.aio.Server) -> list[str]:
        sentiment_pb2_grpc.add_SentimentServicer_to_server(SentimentServicer(gateway), server)
        return [sentiment_pb2.DESCRIPTOR.services_by_name["Sentiment"].full_name]

    return add


# --------------------------------------------------------------------------------------------- StreamCall


class _StreamReader:
    """Reads a StreamCall's messages after its start, in order, and drives the call with them.

    A message's problem goes to this client alone as a non-fatal Error event; the call goes on. The
    request stream ending without ``end`` (the client half-closed) ends the call as ``client_closed``.
    """

    def __init__(self, driver: CallDriver, call_id: str, subscription: Subscription) -> None:
        self._driver = driver
        self._call_id = call_id
        self._subscription = subscription

    def start(self, requests: AsyncIterator[sentiment_pb2.StreamCallRequest]) -> asyncio.Task[None]:
        return asyncio.create_task(self._read(requests), name=f"StreamCall reader {self._call_id}")

    async def _read(self, requests: AsyncIterator[sentiment_pb2.StreamCallRequest]) -> None:
        try:
            async for request in requests:
                await self._handle(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            return  # the client is gone: the servicer's finally hands the call to the grace period
        if self._driver.live:
            self._driver.stop("client_closed")

    async def _handle(self, request: sentiment_pb2.StreamCallRequest) -> None:
        try:
            if request.call_id and request.call_id != self._call_id:
                raise InputError(
                    ErrorCode.INVALID_CALL_ID,
                    f"call_id {request.call_id!r} is not the call of this stream ({self._call_id}); ignored",
                )
            await self._dispatch(request)
        except InputError as err:
            self._subscription.offer(client_error(self._call_id, err))

    async def _dispatch(self, request: sentiment_pb2.StreamCallRequest) -> None:
        kind = request.WhichOneof("payload")
        if kind == "text":
            await self._driver.utterance(utterance_of(request.text))
        elif kind == "end":
            self._driver.stop(request.end.reason or "hangup")
        elif kind == "audio":
            chunk = request.audio
            role = (
                None
                if chunk.channel == audio_pb2.CHANNEL_ROLE_UNSPECIFIED
                else channel_from_role(chunk.channel)
            )
            await self._driver.audio(chunk.audio, role=role, timestamp_ms=chunk.timestamp_ms or None)
        elif kind == "start":
            raise InputError(
                ErrorCode.ALREADY_STARTED,
                f"call {self._call_id} is already started on this stream",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        else:
            raise InputError(
                ErrorCode.INVALID_MESSAGE, "the message carries no payload (start, audio, text, end)"
            )


async def _start_of(
    request: sentiment_pb2.StreamCallRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> tuple[str, CallInfo, AudioInputFormat | None]:
    """The call id, metadata and audio format (when ``format`` is set) of a stream's first message,
    which must be a start."""
    kind = request.WhichOneof("payload")
    if kind != "start":
        await _abort_with(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the first message of StreamCall must be start, not {kind or 'an empty message'}",
        )
    start = request.start
    if request.call_id and start.call_id and request.call_id != start.call_id:
        await _abort_with(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"call_id {request.call_id!r} and start.call_id {start.call_id!r} differ",
        )
    call_id = await _checked(context, validate_call_id, start.call_id or request.call_id)
    metadata = await _checked(context, metadata_of, start.metadata)
    audio = await _checked(context, audio_format_of, start) if start.HasField("format") else None
    return call_id, metadata, audio


async def _checked(context: grpc.aio.ServicerContext[Any, Any], check: Any, value: Any) -> Any:
    """``check(value)``, or the RPC ends with the InputError's status and message."""
    try:
        return check(value)
    except InputError as err:
        await _abort(context, err)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: InputError) -> NoReturn:
    await _abort_with(context, err.status, err.message)


async def _abort_with(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # it raises; this tells type checkers so


# --------------------------------------------------------------------------------------------- conversions


_ENCODING_NAMES = {audio_pb2.PCM16: "pcm16", audio_pb2.MULAW: "mulaw", audio_pb2.ALAW: "alaw"}


def audio_format_of(start: audio_pb2.CallStart) -> AudioInputFormat:
    """CallStart.format and channel_roles, checked by the same rules as the WebSocket's start.audio."""
    fmt = start.format
    roles = [channel_from_role(r) for r in start.channel_roles] or None
    return validate_audio_format(
        {
            "encoding": _ENCODING_NAMES.get(fmt.encoding, "unspecified"),
            "sample_rate_hz": fmt.sample_rate_hz,
            "channels": fmt.channels or 1,
            "channel_roles": roles,
        }
    )


def metadata_of(metadata: audio_pb2.CallMetadata) -> CallInfo:
    return validate_metadata(
        tenant=metadata.tenant,
        agent=metadata.agent,
        team=metadata.team,
        region=metadata.region,
        language=metadata.language,
        labels=dict(metadata.labels),
    )


def utterance_of(text: sentiment_pb2.TextUtterance) -> UtteranceInput:
    return validate_utterance(text.text, channel_from_role(text.channel), text.start_ms, text.end_ms)


def _utterances_of(texts: Sequence[sentiment_pb2.TextUtterance]) -> list[UtteranceInput]:
    utterances = []
    for i, text in enumerate(texts):
        try:
            utterances.append(utterance_of(text))
        except InputError as err:
            raise InputError(err.code, f"utterances[{i}]: {err.message}", err.status) from None
    return utterances


def scored_utterance_proto(event: UtteranceScore) -> sentiment_pb2.ScoredUtterance:
    utterance = chopper_pb2.Utterance(
        call_id=event.call_id,
        utterance_id=event.utterance_id,
        channel=CHANNELS[event.channel],  # type: ignore[arg-type]  # an int of the ChannelRole enum
        start_ms=event.start_ms,
        end_ms=event.end_ms,
        text=event.text,
    )
    score = scorer_pb2.SentimentScore(
        call_id=event.call_id,
        utterance_id=event.utterance_id,
        p_negative=event.p_negative,
        p_neutral=event.p_neutral,
        p_positive=event.p_positive,
        score=event.score,
        label=_LABELS[event.label],
        model_version=event.model_version,
        inference_ms=event.inference_ms or 0.0,
        # Without tone the words' probabilities are the score's own (sentiment.proto: always set).
        text_p_negative=event.text_p_negative if event.text_p_negative is not None else event.p_negative,
        text_p_neutral=event.text_p_neutral if event.text_p_neutral is not None else event.p_neutral,
        text_p_positive=event.text_p_positive if event.text_p_positive is not None else event.p_positive,
        tone_fused=event.tone_fused,
        fusion_version=event.fusion_version or "",
    )
    return sentiment_pb2.ScoredUtterance(utterance=utterance, score=score)


def summary_proto(
    stats: CallStatistics, lines: Sequence[str], objection_tags: Sequence[str]
) -> sentiment_pb2.CallSummary:
    # sentiment.proto's CallSummary follows the customer (the badge's speaker); 0 when none spoke.
    return sentiment_pb2.CallSummary(
        avg_sentiment=stats.customer_avg_sentiment or 0.0,
        min_sentiment=stats.customer_min_sentiment or 0.0,
        utterance_count=stats.utterance_count,
        lines=list(lines),
        objection_tags=list(dict.fromkeys(objection_tags)),
    )


def _call_summary_proto(summary: CallOutcome) -> sentiment_pb2.CallSummary:
    return summary_proto(summary.stats, summary.lines, summary.objection_tags)


def event_proto(event: CallUpdate) -> sentiment_pb2.CallEvent:
    """A call event as sentiment.proto's CallEvent (client-only errors carry seq 0: not in the call's
    sequence, see LiveError)."""
    if isinstance(event, LiveTranscript):
        return sentiment_pb2.CallEvent(call_id=event.call_id, seq=event.seq, transcript=event.source)
    if isinstance(event, LiveProvisional):
        mood = event.mood
        provisional = sentiment_pb2.ProvisionalScore(
            channel=mood.role,  # type: ignore[arg-type]  # an int of the ChannelRole enum
            segment_id=mood.segment_id,
            text=mood.text,
            end_ms=mood.end_ms,
            score=mood.score,
        )
        return sentiment_pb2.CallEvent(call_id=event.call_id, seq=event.seq, provisional=provisional)
    if isinstance(event, LiveScore):
        return sentiment_pb2.CallEvent(
            call_id=event.call_id, seq=event.seq, score=scored_utterance_proto(event.scored)
        )
    if isinstance(event, LiveBadge):
        badge = sentiment_pb2.BadgeChange(
            state=_BADGE_STATES[event.change.state],
            rolling_score=event.change.rolling_score,
            at_ms=event.change.at_ms,
        )
        return sentiment_pb2.CallEvent(call_id=event.call_id, seq=event.seq, badge=badge)
    if isinstance(event, LiveCue):
        cue = sentiment_pb2.CoachingCue(topic=event.cue.topic, text=event.cue.text, at_ms=event.cue.at_ms)
        return sentiment_pb2.CallEvent(call_id=event.call_id, seq=event.seq, cue=cue)
    if isinstance(event, LiveSummary):
        return sentiment_pb2.CallEvent(
            call_id=event.call_id, seq=event.seq, summary=_call_summary_proto(event.summary)
        )
    return error_proto(event)


def error_proto(event: LiveError) -> sentiment_pb2.CallEvent:
    error = sentiment_pb2.Error(
        code=event.status, message=f"{event.message} ({event.code})", fatal=event.fatal
    )
    return sentiment_pb2.CallEvent(call_id=event.call_id, seq=event.seq or 0, error=error)


def call_record_proto(row: CallRow) -> sentiment_pb2.CallRecord:
    record = sentiment_pb2.CallRecord(
        call_id=row.call_id,
        metadata=audio_pb2.CallMetadata(
            tenant=row.tenant,
            agent=row.agent,
            team=row.team,
            region=row.region,
            language=row.language,
            labels=_labels(row.metadata),
        ),
        status=_STATUS.get(row.status, sentiment_pb2.CALL_STATUS_UNSPECIFIED),
        events=[scored_utterance_proto(e) for e in row.events],
    )
    started = Timestamp()
    started.FromDatetime(row.started_at)
    record.started_at.CopyFrom(started)
    if row.ended_at is not None:
        ended = Timestamp()
        ended.FromDatetime(row.ended_at)
        record.ended_at.CopyFrom(ended)
        lines = (row.summary or {}).get("lines") or []
        record.summary.CopyFrom(
            summary_proto(compute_call_stats(row.events), [str(x) for x in lines], row.objection_tags)
        )
    return record


def _labels(metadata: dict[str, Any]) -> dict[str, str]:
    labels = metadata.get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
