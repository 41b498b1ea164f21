"""The gateway's HTTP face: REST, the live WebSocket, health, metrics (FastAPI; OpenAPI at /docs).

Thin on purpose: requests are parsed here (``gateway.schemas``) and handed to the ``Gateway`` and its
CallSessions (``gateway.calls``), which the public gRPC API shares.

WebSocket protocol (``/v1/sentiment/stream``), JSON text frames:

  client -> server   {"type": "start", "call_id": "...", "metadata": {tenant, agent, team, region, language}}
                     {"type": "utterance", "text": "...", "channel": "customer"|"agent", "start_ms", "end_ms"}
                     {"type": "stop"}
                     {"type": "watch", "call_id": "..."}  (or ?watch=CALL_ID): follow a call, send nothing
  server -> client   {"type": "started"}, {"type": "score", ...}, {"type": "error", "code", "message",
                     "fatal"}, {"type": "summary", ...}
                     {"type": "badge", "call_id", "seq", "state": "green"|"amber"|"red", "rolling_score",
                      "at_ms"}: the customer-sentiment badge changed colour (gateway/live.py)
                     {"type": "cue", "call_id", "seq", "topic", "text", "at_ms"}: a coaching hint

Audio calls: a start with ``"audio": {"encoding": "pcm16"|"mulaw"|"alaw", "sample_rate_hz", "channels",
"channel_roles"}``, then binary frames of audio (any size up to 1 MB; about 50 ms is typical). The call's
one Asr.Transcribe stream answers with
                     {"type": "transcript", "call_id", "seq", "segment_id", "is_final", "text", "channel",
                      "start_ms", "end_ms", "unheard_reason"}
and every final is chopped and scored like a text utterance (an empty final with an ``unheard_reason``
is a turn with speech nobody could transcribe: shown, not scored). While a turn is being spoken its stable
words are scored too:
                     {"type": "provisional", "call_id", "seq", "channel", "segment_id", "text", "end_ms",
                      "label", "p_negative", "p_neutral", "p_positive", "score", "model_version"}
replaced by the next provisional event of the segment and then by its final's scores; never stored, never
the badge's (gateway/calls/provisional.py). Errors: audio_not_enabled (binary frames
without audio in start), invalid_audio_format, frame_too_large.

A bad message gets an error event and the connection and its call go on; nothing accepted is lost. After
the summary the connection may start another call. An audio call whose frames stop without a stop message
gets the finals of what was said after a 2 s stall (the ASR's rule), and is stopped with reason
``audio_timeout`` after ``SessionSettings.audio_idle_timeout_s`` (10 minutes) without audio.

``POST /v1/sentiment/batch`` takes JSON utterances or, as ``multipart/form-data``, a recording (fields
``call_id``, ``metadata`` as JSON text, ``channel_roles``, ``speakers``, and the file ``recording``), which
the ASR service transcribes (split by speaker when heard as one channel) before the same
chopper-scorer-store path runs (gateway/recording.py).

Twilio Media Streams (``/v1/twilio/stream/{tenant}``, signed by Twilio): a phone call's two tracks as
8 kHz mu-law, protocol in gateway/twilio.py; its events reach watchers of the call like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import psycopg
import psycopg_pool
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from callsense.config import Config, load_config
from callsense.domain import compute_call_stats
from callsense.telemetry import call_context, tracer
from gateway.auth.access import check_admin, check_may_see, owned_call
from gateway.auth.credentials import Principal
from gateway.auth.twilio_signature import accept_signed_stream, refuse_untenanted_stream
from gateway.auth.web import Caller, websocket_principal
from gateway.auth.web import router as session_router
from gateway.calls.errors import ErrorCode, InputError, NotFoundError
from gateway.calls.fanout import Subscription
from gateway.calls.inputs import decode_json, validate_call_id
from gateway.calls.registry import CallDriver
from gateway.calls.service import BatchResult, Gateway
from gateway.calls.settings import SessionSettings
from gateway.recording import Recording, analyze_recording, too_large
from gateway.reports import router as reports_router
from gateway.schemas import (
    MESSAGE_TYPES,
    BatchRecordingForm,
    BatchRequest,
    BatchResponse,
    CallOut,
    CallStatsOut,
    ErrorResponse,
    Health,
    ReadinessOut,
    RecordingFields,
    ScoredUtteranceOut,
    StartedEvent,
    StartMessage,
    StopMessage,
    TranscriptSegmentOut,
    UtteranceMessage,
    WatchingEvent,
    WatchMessage,
    error_response,
    event_json,
    input_error_json,
    parse_message,
)
from gateway.store import StoreRouter
from gateway.twilio import STREAM_PATH as TWILIO_STREAM_PATH
from gateway.twilio import UNTENANTED_STREAM_PATH as TWILIO_UNTENANTED_PATH
from gateway.twilio import TwilioStream
from gateway.web.docs import add_docs
from gateway.web.routes import router as web_router

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/sentiment/stream"
API_DESCRIPTION = f"""Live and after-the-fact sentiment of sales calls.

**Live calls: WebSocket `{STREAM_PATH}`** (JSON text frames; binary frames are reserved for audio).

Client to server, in this order:
`{{"type": "start", "call_id": "...", "metadata": {{"tenant", "agent", "team", "region", "language"}}}}`,
then any number of
`{{"type": "utterance", "text": "...", "channel": "customer", "start_ms": 0, "end_ms": 900}}`
(channel: customer, agent or mixed),
then `{{"type": "stop"}}`. Watch a call driven elsewhere with `{{"type": "watch", "call_id": "..."}}` or
`?watch=CALL_ID`.

Server to client: `started`, `score` (call_id, seq, utterance_id, text (PII masked), channel, start_ms,
end_ms, label, p_negative, p_neutral, p_positive, score, model_version; and tone_fused, text_p_negative,
text_p_neutral, text_p_positive, text_score, text_label, tone_moved, fusion_version: the words' scores alone
beside the ones fused with the voice's tone), `badge`, `cue`, `error` (code,
message, fatal) and, last, `summary` (status, reason, utterance_count, avg/min sentiment, customer and agent
averages, lines, badge: the final colour).

The live badge and coaching cues follow the customer's time-weighted rolling sentiment (call time, from
the utterances' own start_ms / end_ms). Each comes right after the score that caused it, in the call's
`seq` sequence, to the driver and every watcher:
`{{"type": "badge", "call_id": "...", "seq": 9, "state": "red", "rolling_score": 0.21, "at_ms": 24000}}`
(state green, amber or red; every call starts amber without an event; red once the rolling average has
stayed below 0.30 for more than 5 s, and back only with hysteresis),
`{{"type": "cue", "call_id": "...", "seq": 10, "topic": "pricing", "text": "...", "at_ms": 24000}}`
(topic pricing, timeline, competitor, authority, need or general; on a sustained negative trend, never on a
single low sentence, and throttled). Thresholds can differ per tenant.

A bad message gets an `error` event and the call goes on; what was accepted is always scored and stored,
also when the client vanishes (the call then ends with reason `client_gone` after a grace period). After
the summary the connection may start another call. The same API over gRPC: `callsense.v1.Sentiment`.
"""
_HTTP_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CALL_CONFLICT: 409,
    ErrorCode.CALL_ACTIVE: 409,
    ErrorCode.INVALID_CALL_ID: 400,
    ErrorCode.INVALID_RECORDING: 400,
    ErrorCode.RECORDING_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.STAGE_FAILED: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse, "description": "No valid credential (`unauthenticated`)."},
    403: {"model": ErrorResponse, "description": "The key's tenant or role does not reach it (`forbidden`)."},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
_BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERROR_RESPONSES,
    413: {"model": ErrorResponse, "description": "The recording is larger than the gateway takes."},
    415: {"model": ErrorResponse, "description": "Neither JSON nor multipart/form-data."},
}
_BATCH_BODIES = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}},
            "multipart/form-data": {
                "schema": {"$ref": "#/components/schemas/BatchRecordingForm"},
                "encoding": {"metadata": {"contentType": "application/json"}},
            },
        },
    }
}
FORM_OVERHEAD_BYTES = 64 * 1024
"""What a multipart body may hold beside the recording (boundaries, headers, the small fields)."""


def create_app(
    config: Config | None = None,
    *,
    gateway: Gateway | None = None,
    store_router: StoreRouter | None = None,
    database_url: str | None = None,
    settings: SessionSettings | None = None,
) -> FastAPI:
    """The FastAPI app. With ``gateway`` it serves that one (owned by the caller, e.g. ``__main__``
    which shares it with the gRPC server); otherwise its lifespan opens a Gateway from ``config``
    (stores from ``store_router``, else ``database_url``, else DATABASE_URL, else embedded PostgreSQL)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gateway is not None:
            app.state.gateway = gateway
            yield
            return
        opened = await Gateway.open(
            config or load_config(), stores=store_router, database_url=database_url, settings=settings
        )
        app.state.gateway = opened
        try:
            yield
        finally:
            await opened.close()

    app = FastAPI(
        title="callsense gateway",
        version="1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package by add_docs: FastAPI's own page loads a CDN
        redoc_url=None,
    )
    add_docs(app)
    _add_error_handlers(app)
    _add_routes(app)
    _document_schemas(app, (BatchRequest, BatchRecordingForm))
    app.include_router(session_router)  # /v1/session: browsers sign in with a key
    app.include_router(web_router)  # the console, the review page, timeline.png
    app.include_router(reports_router)  # GET /v1/reports/daily
    return app


def _gateway(request: Request | WebSocket) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back (a rejected 1 MB text, or PII), only where and why.
        details: list[dict[str, Any]] = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first: dict[str, Any] = details[0] if details else {"loc": [], "msg": "invalid request", "type": ""}
        known = first["type"] in vars(ErrorCode).values()
        code = first["type"] if known else ErrorCode.INVALID_MESSAGE
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = first["msg"] if known or not where else f"{where}: {first['msg']}"
        return error_response(422, code, message, details)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        response = error_response(_HTTP_STATUS.get(exc.code, 422), exc.code, exc.message)
        if exc.code == ErrorCode.UNAUTHENTICATED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="callsense"'
        return response

    @app.exception_handler(grpc.aio.AioRpcError)
    async def stage_error(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        log.warning("pipeline stage failed: %s %s", exc.code().name, exc.details())
        return error_response(
            503, ErrorCode.STAGE_FAILED, f"a pipeline stage is unavailable ({exc.code().name})"
        )

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(
            503,
            ErrorCode.DATABASE_UNAVAILABLE,
            "the database is unavailable; retry later (GET /readyz says when it is back)",
        )

    # A database that is down or restarting: the pool gives up waiting for a connection (PoolTimeout), or
    # a connection breaks under a query (OperationalError). Neither is the caller's fault: 503, not 500.
    for database_failure in (psycopg.OperationalError, psycopg_pool.PoolTimeout):
        app.add_exception_handler(database_failure, database_error)


def _add_routes(app: FastAPI) -> None:
    @app.post(
        "/v1/sentiment/batch",
        response_model=BatchResponse,
        responses=_BATCH_RESPONSES,
        openapi_extra=_BATCH_BODIES,
    )
    async def analyze_batch(request: Request, caller: Caller) -> BatchResponse:
        """Score a finished call and summarise it. Two kinds of body:

        - `application/json`: the call's utterances as text (split and PII-masked by the chopper);
        - `multipart/form-data`: the call's recording (wav, flac, mp3, ogg) in the file field `recording`,
          with `call_id`, optional `metadata` (JSON text), `channel_roles` ("agent,customer": who speaks
          on each channel; default mono one channel, stereo "agent,customer") and `speakers` (whether a
          recording heard as one channel is split between agent and customer, as `callsense analyze
          --speakers`: "auto", the default, splits a mono file sent without channel_roles, the first
          speaker being the agent; "agent-first", "customer-first" split it, or a "mixed" downmix, saying
          who speaks first; "none" keeps one "mixed" channel). The ASR service transcribes it (its
          offline decoder, the more accurate one); the answer adds `transcript`, what was heard.
          400 `invalid_recording` for a file that is not audio, truncated or over an hour (the message
          says which), 413 past the size limit, 422 `invalid_speakers` for a `speakers` that is not one
          of those or splits channels `channel_roles` names, 422 `no_speech` when nothing was said, 503
          without ASR.

        Idempotent: the same call_id with the same utterances (or recording) returns the same result and
        stores nothing twice; a call_id that already holds different utterances answers 409.
        """
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            return await _analyze_recording(request, caller)
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            raise InputError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"content-type {media_type!r} is not taken here: send application/json (utterances) or "
                "multipart/form-data (a recording in the field 'recording')",
            )
        body = _validated(BatchRequest, await request.body())
        with call_context(body.call_id):
            result = await _gateway(request).analyze_batch(
                body.call_id,
                owned_call(caller, body.metadata.to_domain()),
                [u.to_domain() for u in body.utterances],
            )
        return _batch_response(result)

    @app.get("/v1/calls/{call_id}", response_model=CallOut, responses=_ERROR_RESPONSES)
    async def get_call(call_id: str, request: Request, caller: Caller) -> CallOut | JSONResponse:
        """A stored call: metadata, status, statistics and scored utterances."""
        gateway = _gateway(request)
        row = await gateway.get_call(validate_call_id(call_id))
        if row is None:
            return error_response(404, ErrorCode.NOT_FOUND, f"no call with id {call_id!r}")
        check_may_see(caller, row.tenant, row.team, row.agent, call_id)
        live_here = gateway.registry.get(call_id) is not None
        return CallOut.of(row, compute_call_stats(row.events), live_here=live_here)

    @app.delete("/v1/calls/{call_id}", status_code=204, responses=_ERROR_RESPONSES)
    async def erase_call(call_id: str, request: Request, caller: Caller) -> Response:
        """Erase a call (an admin key of its tenant): its row, utterances and outbox rows go, an audit row
        (who, when, which call; none of its content) stays. 409 while it is live; 404 when there is none
        (or it is another tenant's)."""
        check_admin(caller)
        await _gateway(request).erase_call(validate_call_id(call_id), caller.tenant, caller.key_id)
        return Response(status_code=204)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up (liveness)."""
        return Health()

    @app.get("/readyz", response_model=ReadinessOut, responses={503: {"model": ReadinessOut}})
    async def readyz(request: Request) -> JSONResponse:
        """The chopper and the scorer are reachable (readiness); 503 otherwise. The database is reported
        (``checks.database``) but does not decide: live calls go on while it is away. ``models`` names the
        model version the scorer serves."""
        readiness = await _gateway(request).readiness()
        body = ReadinessOut(
            ready=readiness.ready, checks=dict(readiness.checks), models=dict(readiness.models)
        )
        return JSONResponse(body.model_dump(), status_code=200 if readiness.ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: active calls, stage latencies, counters."""
        text = _gateway(request).metrics.render()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.websocket(STREAM_PATH)
    async def stream(websocket: WebSocket, watch: str | None = None) -> None:
        """Live call: see the module docs for the protocol."""
        gateway = _gateway(websocket)
        principal = await websocket_principal(websocket, gateway.tenants)
        if principal is None:
            return
        await websocket.accept()
        await StreamConnection(websocket, gateway, principal).run(watch)

    @app.websocket(TWILIO_UNTENANTED_PATH)
    async def twilio_stream_without_tenant(websocket: WebSocket) -> None:
        """The old Twilio path named no tenant: refused (403), the message names the path to use."""
        await refuse_untenanted_stream(websocket)

    @app.websocket(TWILIO_STREAM_PATH)
    async def twilio_stream(websocket: WebSocket, tenant: str) -> None:
        """A Twilio Media Stream of ``tenant`` (see gateway/twilio.py): inbound track = customer, outbound =
        agent. Only as Twilio signs it with the tenant's auth token (gateway/auth/twilio_signature.py)."""
        gateway = _gateway(websocket)
        if not await accept_signed_stream(websocket, gateway.tenants, tenant):
            return
        await websocket.accept()
        stream = TwilioStream(gateway.registry, tenant)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await stream.on_text(message["text"])
                    if stream.refused is not None:  # a start for another tenant: nothing more to take
                        await websocket.close(code=1008, reason=stream.refused.code)
                        break
        except WebSocketDisconnect:
            pass
        finally:
            stream.close()


# --------------------------------------------------------------------------------------------- batch


def _validated(model: type[BatchRequest], body: bytes) -> BatchRequest:
    """The JSON body as ``model``; a RequestValidationError (422) as FastAPI would raise it."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        raise _request_error(exc) from None


def _request_error(exc: ValidationError) -> RequestValidationError:
    errors = exc.errors(include_url=False, include_input=False)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def _batch_response(
    result: BatchResult, transcript: list[TranscriptSegmentOut] | None = None
) -> BatchResponse:
    return BatchResponse(
        call_id=result.call_id,
        utterances=[ScoredUtteranceOut.of(e) for e in result.events],
        stats=CallStatsOut.of(result.summary.stats),
        summary=list(result.summary.lines),
        transcript=transcript,
    )


async def _analyze_recording(request: Request, caller: Principal) -> BatchResponse:
    gateway = _gateway(request)
    max_bytes = gateway.settings.max_recording_bytes
    form = await _read_form(request, max_bytes)
    try:
        fields = _recording_fields(form)
        upload = form.get("recording")
        if not isinstance(upload, UploadFile):
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "recording"),
                        "msg": "a file is required: send the call's recording (wav, flac, mp3 or ogg) as "
                        "the form field 'recording'",
                        "type": "missing",
                    }
                ]
            )
        if upload.size is not None and upload.size > max_bytes:
            raise too_large(max_bytes)
        recording = Recording(
            upload.file,
            upload.filename or "",
            upload.content_type or "",
            fields.channel_roles,
            fields.speakers,
        )
        with call_context(fields.call_id):
            metadata = owned_call(caller, fields.metadata.to_domain())
            result = await analyze_recording(gateway, fields.call_id, metadata, recording)
    finally:
        await form.close()
    return _batch_response(result.batch, [TranscriptSegmentOut.of(e) for e in result.transcript])


def _recording_fields(form: FormData) -> RecordingFields:
    values = {name: form.get(name) for name in ("call_id", "metadata", "channel_roles", "speakers")}
    try:
        return RecordingFields.model_validate({k: v for k, v in values.items() if isinstance(v, str)})
    except ValidationError as exc:
        raise _request_error(exc) from None


async def _read_form(request: Request, max_file_bytes: int) -> FormData:
    """The multipart form, its file spooled to disk past 1 MB; 413 as soon as the body outgrows the limit
    (a declared Content-Length over it is refused before a byte is read)."""
    limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(max_file_bytes)

    async def body() -> AsyncGenerator[bytes, None]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(max_file_bytes)
            yield chunk

    parser = MultiPartParser(request.headers, body(), max_files=1, max_fields=8)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InputError(
            ErrorCode.INVALID_MESSAGE, f"the multipart/form-data body cannot be read: {exc.message}"
        ) from None


def _document_schemas(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Add ``models`` (and what they use) to the OpenAPI components: routes that read their body
    themselves (the batch route's two bodies) refer to them by name."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI's, cached by it in app.openapi_schema
        _, defs = models_json_schema(
            [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


# --------------------------------------------------------------------------------------------- WebSocket


class StreamConnection:
    """One WebSocket: reads client messages in order, forwards the events of its call."""

    def __init__(self, websocket: WebSocket, gateway: Gateway, principal: Principal) -> None:
        self._ws = websocket
        self._gateway = gateway
        self._principal = principal
        self._driver = CallDriver(gateway.registry)
        self._send_lock = asyncio.Lock()
        self._forwarder: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._watching: str | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "start": self._on_start,
            "utterance": self._on_utterance,
            "stop": self._on_stop,
            "watch": self._on_watch,
        }

    async def run(self, watch: str | None) -> None:
        try:
            if watch is not None:
                await self._handle({"type": "watch", "call_id": watch})
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    await self._on_binary(message["bytes"])
                elif message.get("text") is not None:
                    await self._on_text(message["text"])
        except WebSocketDisconnect:
            pass
        finally:
            self._close()

    def _close(self) -> None:
        # A call still running is left to its grace period: everything accepted is scored and stored.
        self._driver.disconnect()
        self._end_forwarding()

    async def _on_text(self, text: str) -> None:
        try:
            data = decode_json(text)
        except InputError as err:
            await self._send_error(err)
            return
        if not isinstance(data, dict):
            await self._send_error(
                InputError(ErrorCode.INVALID_MESSAGE, 'a message must be a JSON object with a "type"')
            )
            return
        await self._handle(data)

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        try:
            if handler is None:
                raise InputError(
                    ErrorCode.UNKNOWN_TYPE,
                    f"unknown message type {kind!r}: use {', '.join(repr(t) for t in MESSAGE_TYPES)}",
                )
            call_id = self._driver.call_id or _maybe_call_id(data)
            with contextlib.ExitStack() as stack:
                if call_id:
                    stack.enter_context(call_context(call_id))
                stack.enter_context(tracer().start_as_current_span(f"WS {kind}", kind=SpanKind.SERVER))
                await handler(data)
        except InputError as err:
            self._gateway.metrics.count("callsense_gateway_input_errors_total", code=err.code)
            await self._send_error(err)

    async def _on_binary(self, data: bytes) -> None:
        try:
            await self._driver.audio(data)
        except InputError as err:
            await self._send_error(err)

    async def _on_start(self, data: dict[str, Any]) -> None:
        if self._watching is not None:
            raise InputError(ErrorCode.ALREADY_STARTED, f"this connection watches call {self._watching}")
        message = parse_message(StartMessage, data)
        metadata = owned_call(self._principal, message.metadata.to_domain())
        live = self._gateway.registry.get(message.call_id)
        if live is not None:  # a reconnect: only someone who may see the call takes it back
            info = live.metadata
            check_may_see(self._principal, info.tenant, info.team, info.agent, message.call_id)
        if self._forwarder is not None and not self._forwarder.done():
            # The previous call's last events (its summary) go out before the next call's first.
            await asyncio.wait({self._forwarder}, timeout=5.0)
        session, resumed = await self._driver.start(message.call_id, metadata, message.audio_format())
        await self._send(StartedEvent(call_id=session.call_id, resumed=resumed).model_dump())
        self._forward(session.subscribe(replay=resumed), close_after=False)

    async def _on_utterance(self, data: dict[str, Any]) -> None:
        if self._watching is not None:
            raise InputError(ErrorCode.NOT_STARTED, f"this connection watches call {self._watching}")
        message = parse_message(UtteranceMessage, data)
        await self._driver.utterance(message.to_domain())

    async def _on_stop(self, data: dict[str, Any]) -> None:
        message = parse_message(StopMessage, data)
        # Not awaited: the reader goes on (answering late messages) while the call flushes; the summary
        # reaches this client through its subscription.
        task = self._driver.stop(message.reason)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_watch(self, data: dict[str, Any]) -> None:
        message = parse_message(WatchMessage, data)
        if self._driver.session is not None or self._watching is not None:
            raise InputError(ErrorCode.ALREADY_STARTED, "this connection already drives or watches a call")
        live = self._gateway.registry.get(message.call_id)
        if live is not None:
            info = live.metadata
            check_may_see(self._principal, info.tenant, info.team, info.agent, message.call_id)
        try:
            subscription = self._gateway.registry.subscribe(message.call_id)
        except NotFoundError as exc:
            err = InputError(ErrorCode.NOT_FOUND, str(exc))
            await self._send(input_error_json(err, message.call_id, fatal=True))
            await self._ws.close(code=1000)
            return
        self._watching = message.call_id
        await self._send(WatchingEvent(call_id=message.call_id).model_dump())
        self._forward(subscription, close_after=True)

    # -- sending

    def _forward(self, subscription: Subscription, *, close_after: bool) -> None:
        self._end_forwarding()
        self._subscription = subscription
        self._forwarder = asyncio.create_task(self._pump(subscription, close_after))
        streams = self._gateway.client_streams
        streams.add(self._forwarder)
        self._forwarder.add_done_callback(streams.discard)

    async def _pump(self, subscription: Subscription, close_after: bool) -> None:
        try:
            async for event in subscription:
                await self._send(event_json(event))
            if close_after:
                await self._ws.close(code=1000)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client is gone; the call does not depend on it

    def _end_forwarding(self) -> None:
        if self._subscription is not None:
            session = self._gateway.registry.get(self._subscription.call_id)
            if session is not None:
                session.unsubscribe(self._subscription)
            self._subscription.close()
        if self._forwarder is not None and not self._forwarder.done():
            self._forwarder.cancel()

    async def _send(self, payload: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._ws.send_text(json.dumps(payload))

    async def _send_error(self, err: InputError) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._send(input_error_json(err, self._driver.call_id or self._watching))


def _maybe_call_id(data: dict[str, Any]) -> str | None:
    value = data.get("call_id")
    try:
        return validate_call_id(value)
    except InputError:
        return None
