"""Twilio Media Streams: a phone call's audio, live, over a WebSocket (``WS /v1/twilio/stream/{tenant}``).

The stream's tenant is the path's: the upgrade is accepted only when its ``X-Twilio-Signature`` was made with
that tenant's Twilio auth token (gateway/auth/twilio_signature.py), so a stream cannot name its tenant
anywhere else. The old path without a tenant, ``/v1/twilio/stream``, is refused (HTTP 403).

Twilio sends JSON text frames (https://www.twilio.com/docs/voice/media-streams/websocket-messages):

    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ...",
     "start": {"streamSid": "MZ...", "callSid": "CA...", "tracks": ["inbound", "outbound"],
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
               "customParameters": {"call_id": "...", "tenant": "...", "agent": "..."}}}
    {"event": "media", "streamSid": "MZ...",
     "media": {"track": "inbound"|"outbound", "chunk": "2", "timestamp": "5", "payload": "<base64>"}}
    {"event": "mark", ...}, {"event": "dtmf", ...}            (ignored)
    {"event": "stop", "streamSid": "MZ...", "stop": {"callSid": "CA..."}}

The call's id is ``customParameters.call_id`` when given, else ``twilio-<callSid>``; agent, team, region and
language come from ``customParameters`` too. ``customParameters.tenant`` may be left out; naming another
tenant than the path's refuses the start (``forbidden``: logged, counted, and ``refused`` tells gateway/app.py
to close the stream). The inbound track is the customer, the outbound track the agent: each track's 8 kHz
mu-law audio goes to the ASR as that role's mono audio, so every transcript, score, badge and cue carries the
right channel. Twilio reads nothing we send back: the
call's events go to its watchers (``/v1/sentiment/stream?watch=<call_id>``, or the gRPC Watch) and to the
store, as for any live call.

Bad input (invalid JSON, an unknown event, media before start, a bad payload) is logged and, once the
call is known, published to its watchers as a non-fatal ``error`` event; the stream and the call go on.
A socket that closes without ``stop`` leaves the call to the usual grace period (reason ``client_gone``).

This module knows nothing of HTTP: ``TwilioStream.on_text`` takes each text frame, ``close`` the end of
the socket; gateway/app.py wires it to the WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from callsense.domain import Channel
from callsense.telemetry import call_context
from gateway.auth.access import forbidden
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.events import CallOutcome
from gateway.calls.inputs import AudioInputFormat, decode_json, validate_call_id, validate_metadata
from gateway.calls.registry import CallDriver, SessionRegistry

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/twilio/stream/{tenant}"
"""The route: Twilio's Stream URL takes no query string, so the tenant is in the path (``stream_path``)."""
UNTENANTED_STREAM_PATH = "/v1/twilio/stream"
"""The path before streams were signed: it named no tenant, so it is refused, naming ``STREAM_PATH``."""
TRACK_ROLES: Mapping[str, Channel] = {"inbound": "customer", "outbound": "agent"}
"""Twilio's tracks: inbound is what the caller (customer) says, outbound what our side (agent) says."""
IGNORED_EVENTS = frozenset({"mark", "dtmf"})
ENCODING, SAMPLE_RATE_HZ = "audio/x-mulaw", 8_000
_METADATA_KEYS = ("agent", "team", "region", "language")


def stream_path(tenant: str) -> str:
    """The path of ``tenant``'s Twilio Media Streams (the tenant percent-encoded as one path segment)."""
    return STREAM_PATH.format(tenant=quote(tenant, safe=""))


def _invalid(message: str, code: str = ErrorCode.INVALID_MESSAGE) -> InputError:
    return InputError(code, message)


class TwilioStream:
    """One Twilio media stream of ``tenant`` (whose signature the upgrade carried): its messages in order
    drive one call through a ``CallDriver``."""

    def __init__(self, registry: SessionRegistry, tenant: str) -> None:
        self._registry = registry
        self.tenant = tenant
        self.refused: InputError | None = None
        """Set when a start was refused as ``forbidden`` (another tenant's): the stream cannot go on."""
        self._driver = CallDriver(registry)
        self._tracks: tuple[str, ...] = ()
        self.stream_sid: str | None = None
        self._stopping: asyncio.Future[CallOutcome] | None = None

    @property
    def call_id(self) -> str | None:
        return self._driver.call_id

    async def on_text(self, text: str) -> None:
        """Handle one text frame; never raises for bad input (it is logged and reported)."""
        try:
            data = decode_json(text)
            if not isinstance(data, dict):
                raise _invalid('a message must be a JSON object with an "event"')
            await self._handle(data)
        except InputError as err:
            self._report(err)

    async def _handle(self, data: dict[str, Any]) -> None:
        event = data.get("event")
        if event == "connected":
            log.debug("twilio stream connected (protocol %r)", data.get("protocol"))
        elif event == "start":
            try:
                await self._on_start(data)
            except InputError as err:
                if err.code == ErrorCode.FORBIDDEN:  # another tenant's call: nothing this stream may do
                    self.refused = err
                raise
        elif event == "media":
            await self._on_media(data)
        elif event == "stop":
            self._on_stop()
        elif event in IGNORED_EVENTS:
            pass
        else:
            raise _invalid(
                f"unknown event {str(event)[:40]!r}: expected connected, start, media, stop, mark or dtmf",
                ErrorCode.UNKNOWN_TYPE,
            )

    async def _on_start(self, data: dict[str, Any]) -> None:
        start = data.get("start")
        if not isinstance(start, dict):
            raise _invalid('start: "start" must be an object with callSid, tracks and mediaFormat')
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise _invalid("start.mediaFormat must be an object", ErrorCode.INVALID_AUDIO_FORMAT)
        encoding, rate, channels = fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels", 1)
        if encoding != ENCODING or rate != SAMPLE_RATE_HZ or channels != 1:
            raise _invalid(
                f"start.mediaFormat {encoding!r} {rate!r} Hz x{channels!r} is unsupported: Twilio media "
                f"streams are {ENCODING} {SAMPLE_RATE_HZ} Hz mono",
                ErrorCode.INVALID_AUDIO_FORMAT,
            )
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not tracks or any(t not in TRACK_ROLES for t in tracks):
            raise _invalid(f"start.tracks {tracks!r} is invalid: use inbound and/or outbound")
        tracks = sorted(set(tracks), key=list(TRACK_ROLES).index)
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise _invalid("start.customParameters must be an object")
        call_sid = start.get("callSid")
        call_id = params.get("call_id")
        if not call_id:
            if not isinstance(call_sid, str) or not call_sid:
                raise _invalid("start.callSid is required (or customParameters.call_id)")
            call_id = f"twilio-{call_sid}"
        call_id = validate_call_id(call_id)
        named = str(params.get("tenant") or "").strip()
        if named and named != self.tenant:
            raise forbidden(
                f"customParameters.tenant {named[:80]!r} is not this stream's tenant ({self.tenant!r}, from "
                "its URL and signature); leave it out, or point the Stream at that tenant's URL"
            )
        metadata = validate_metadata(
            tenant=self.tenant,
            **{k: str(params[k]) for k in _METADATA_KEYS if params.get(k) is not None},
            labels={"source": "twilio", **({"call_sid": call_sid} if isinstance(call_sid, str) else {})},
        )
        roles = tuple(TRACK_ROLES[t] for t in tracks)
        audio = AudioInputFormat("mulaw", SAMPLE_RATE_HZ, len(roles), roles)
        with call_context(call_id):
            await self._driver.start(call_id, metadata, audio)
            self._tracks = tuple(tracks)
            self.stream_sid = str(start.get("streamSid") or data.get("streamSid") or "") or None
            log.info("twilio stream %s: call %s started (tracks %s)", self.stream_sid, call_id, tracks)

    async def _on_media(self, data: dict[str, Any]) -> None:
        if self._driver.session is None:
            raise _invalid("media before start: Twilio sends start first", ErrorCode.NOT_STARTED)
        media = data.get("media")
        if not isinstance(media, dict):
            raise _invalid('media: "media" must be an object with track, timestamp and payload')
        track = media.get("track", "inbound")
        if track not in self._tracks:
            raise _invalid(
                f"media.track {str(track)[:40]!r} is not one of the stream's tracks "
                f"({', '.join(self._tracks)})",
                ErrorCode.INVALID_CHANNEL,
            )
        payload = media.get("payload")
        try:
            if not isinstance(payload, str):
                raise ValueError("not a string")
            audio = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise _invalid(f"media.payload is not valid base64 ({exc}); the chunk was dropped") from None
        timestamp_ms = _timestamp(media.get("timestamp"))
        with call_context(self._driver.call_id or ""):
            await self._driver.audio(audio, role=TRACK_ROLES[track], timestamp_ms=timestamp_ms)

    def _on_stop(self) -> None:
        if self._driver.session is None:
            raise _invalid("stop before start", ErrorCode.NOT_STARTED)
        with call_context(self._driver.call_id or ""):
            self._stopping = self._driver.stop("hangup")
        log.info("twilio stream %s: call %s stopped", self.stream_sid, self._driver.call_id)

    def _report(self, err: InputError) -> None:
        call_id = self._driver.call_id
        log.warning("twilio stream %s (call %s): %s: %s", self.stream_sid, call_id, err.code, err.message)
        self._registry.metrics.count("callsense_gateway_input_errors_total", code=err.code)
        session = self._driver.session
        if session is not None:
            session.report_error(err)

    def close(self) -> None:
        """The socket closed: a call still running without stop is left to its grace period."""
        self._driver.disconnect()

    async def wait_stopped(self) -> CallOutcome | None:
        """The summary of a stopped call (None when none was stopped)."""
        return await self._stopping if self._stopping is not None else None


def _timestamp(value: object) -> int | None:
    """Twilio sends media.timestamp as a string of milliseconds since the stream started."""
    try:
        ms = int(str(value))
    except ValueError:
        return None
    return ms if 0 <= ms < 2**31 else None
