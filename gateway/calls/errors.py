"""Errors of a call as clients see them: the stable error codes, bad input, a failed stage.

Every transport (WebSocket, REST, gRPC, Twilio) answers with these codes and messages, so one problem
reads the same whichever way a client came in. Nothing here knows the pipeline: a transport that only
needs to answer a 404 imports this module, not the sessions.
"""

from __future__ import annotations

import grpc
import grpc.aio


class ErrorCode:
    """The ``code`` of error events and HTTP error bodies (snake_case, stable: clients switch on them)."""

    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    INVALID_CALL_ID = "invalid_call_id"
    INVALID_METADATA = "invalid_metadata"
    TEXT_TOO_LONG = "text_too_long"
    EMPTY_TEXT = "empty_text"
    INVALID_TEXT = "invalid_text"
    """Text holding a NUL or a lone UTF-16 surrogate: nothing can store or send it as it is."""
    INVALID_CHANNEL = "invalid_channel"
    INVALID_TIMES = "invalid_times"
    NOT_STARTED = "not_started"
    ALREADY_STARTED = "already_started"
    STOPPED = "stopped"
    CALL_ACTIVE = "call_active"
    CALL_ENDED = "call_ended"
    CALL_CONFLICT = "call_conflict"
    CALL_FAILED = "call_failed"
    NOT_FOUND = "not_found"
    AUDIO_NOT_ENABLED = "audio_not_enabled"
    INVALID_AUDIO_FORMAT = "invalid_audio_format"
    FRAME_TOO_LARGE = "frame_too_large"
    TOO_MANY_UTTERANCES = "too_many_utterances"
    SLOW_CONSUMER = "slow_consumer"
    STAGE_FAILED = "stage_failed"
    DATABASE_UNAVAILABLE = "database_unavailable"
    STORAGE_FAILED = "storage_failed"
    POSTCALL_UNAVAILABLE = "postcall_unavailable"
    """The post-call worker did not answer at the call's end: the call and its scores are stored, its report
    is owed and follows (gateway/postcall_client.py)."""
    TIMEOUT = "timeout"
    INVALID_RECORDING = "invalid_recording"
    RECORDING_TOO_LARGE = "recording_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NO_SPEECH = "no_speech"
    INVALID_SPEAKERS = "invalid_speakers"
    """A recording's ``speakers`` (speaker split) that is not one of auto, agent-first, customer-first, none,
    or that splits a recording whose channel_roles already say who speaks (gateway/recording.py)."""
    UNAUTHENTICATED = "unauthenticated"
    """No credential, or one that is unknown, revoked or expired (HTTP 401, gRPC UNAUTHENTICATED)."""
    FORBIDDEN = "forbidden"
    """A valid credential whose tenant or role does not reach what was asked (HTTP 403,
    gRPC PERMISSION_DENIED)."""


class InputError(Exception):
    """A client's message cannot be used. ``code`` is an ErrorCode; ``status`` its gRPC equivalent."""

    def __init__(
        self, code: str, message: str, status: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class NotFoundError(LookupError):
    """No live call with that call_id on this gateway (watching a call that is not live here)."""


class StageError(Exception):
    """A stage's stream of a call failed."""

    def __init__(self, stage: str, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{stage}: {error.code().name}")
        self.stage = stage
        self.error = error


def describe_failure(exc: BaseException) -> str:
    """A client-safe line about a failed pipeline: which stage, its status and details."""
    if isinstance(exc, BaseExceptionGroup):
        return describe_failure(exc.exceptions[0])
    if isinstance(exc, StageError):
        details = exc.error.details() or ""
        return f"the {exc.stage} failed: {exc.error.code().name}" + (f": {details}" if details else "")
    return f"the pipeline failed: {type(exc).__name__}"
