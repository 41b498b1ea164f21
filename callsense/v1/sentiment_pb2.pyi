import datetime

from callsense.v1 import asr_pb2 as _asr_pb2
from callsense.v1 import audio_pb2 as _audio_pb2
from callsense.v1 import chopper_pb2 as _chopper_pb2
from callsense.v1 import scorer_pb2 as _scorer_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BadgeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BADGE_STATE_UNSPECIFIED: _ClassVar[BadgeState]
    GREEN: _ClassVar[BadgeState]
    AMBER: _ClassVar[BadgeState]
    RED: _ClassVar[BadgeState]

class CallStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_STATUS_UNSPECIFIED: _ClassVar[CallStatus]
    ACTIVE: _ClassVar[CallStatus]
    COMPLETED: _ClassVar[CallStatus]
    FAILED: _ClassVar[CallStatus]
BADGE_STATE_UNSPECIFIED: BadgeState
GREEN: BadgeState
AMBER: BadgeState
RED: BadgeState
CALL_STATUS_UNSPECIFIED: CallStatus
ACTIVE: CallStatus
COMPLETED: CallStatus
FAILED: CallStatus

class StreamCallRequest(_message.Message):
    __slots__ = ("call_id", "start", "audio", "text", "end")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    start: _audio_pb2.CallStart
    audio: _audio_pb2.AudioChunk
    text: TextUtterance
    end: _audio_pb2.CallEnd
    def __init__(self, call_id: _Optional[str] = ..., start: _Optional[_Union[_audio_pb2.CallStart, _Mapping]] = ..., audio: _Optional[_Union[_audio_pb2.AudioChunk, _Mapping]] = ..., text: _Optional[_Union[TextUtterance, _Mapping]] = ..., end: _Optional[_Union[_audio_pb2.CallEnd, _Mapping]] = ...) -> None: ...

class TextUtterance(_message.Message):
    __slots__ = ("text", "channel", "start_ms", "end_ms")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    text: str
    channel: _audio_pb2.ChannelRole
    start_ms: int
    end_ms: int
    def __init__(self, text: _Optional[str] = ..., channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ...) -> None: ...

class ScoredUtterance(_message.Message):
    __slots__ = ("utterance", "score")
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    utterance: _chopper_pb2.Utterance
    score: _scorer_pb2.SentimentScore
    def __init__(self, utterance: _Optional[_Union[_chopper_pb2.Utterance, _Mapping]] = ..., score: _Optional[_Union[_scorer_pb2.SentimentScore, _Mapping]] = ...) -> None: ...

class BadgeChange(_message.Message):
    __slots__ = ("state", "rolling_score", "at_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROLLING_SCORE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    state: BadgeState
    rolling_score: float
    at_ms: int
    def __init__(self, state: _Optional[_Union[BadgeState, str]] = ..., rolling_score: _Optional[float] = ..., at_ms: _Optional[int] = ...) -> None: ...

class CoachingCue(_message.Message):
    __slots__ = ("topic", "text", "at_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    text: str
    at_ms: int
    def __init__(self, topic: _Optional[str] = ..., text: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class CallSummary(_message.Message):
    __slots__ = ("avg_sentiment", "min_sentiment", "utterance_count", "lines", "objection_tags")
    AVG_SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    OBJECTION_TAGS_FIELD_NUMBER: _ClassVar[int]
    avg_sentiment: float
    min_sentiment: float
    utterance_count: int
    lines: _containers.RepeatedScalarFieldContainer[str]
    objection_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, avg_sentiment: _Optional[float] = ..., min_sentiment: _Optional[float] = ..., utterance_count: _Optional[int] = ..., lines: _Optional[_Iterable[str]] = ..., objection_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "fatal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    fatal: bool
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., fatal: _Optional[bool] = ...) -> None: ...

class CallEvent(_message.Message):
    __slots__ = ("call_id", "seq", "transcript", "score", "badge", "cue", "summary", "error", "provisional")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BADGE_FIELD_NUMBER: _ClassVar[int]
    CUE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    seq: int
    transcript: _asr_pb2.TranscriptEvent
    score: ScoredUtterance
    badge: BadgeChange
    cue: CoachingCue
    summary: CallSummary
    error: Error
    provisional: ProvisionalScore
    def __init__(self, call_id: _Optional[str] = ..., seq: _Optional[int] = ..., transcript: _Optional[_Union[_asr_pb2.TranscriptEvent, _Mapping]] = ..., score: _Optional[_Union[ScoredUtterance, _Mapping]] = ..., badge: _Optional[_Union[BadgeChange, _Mapping]] = ..., cue: _Optional[_Union[CoachingCue, _Mapping]] = ..., summary: _Optional[_Union[CallSummary, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., provisional: _Optional[_Union[ProvisionalScore, _Mapping]] = ...) -> None: ...

class ProvisionalScore(_message.Message):
    __slots__ = ("channel", "segment_id", "text", "end_ms", "score")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    channel: _audio_pb2.ChannelRole
    segment_id: int
    text: str
    end_ms: int
    score: _scorer_pb2.SentimentScore
    def __init__(self, channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., segment_id: _Optional[int] = ..., text: _Optional[str] = ..., end_ms: _Optional[int] = ..., score: _Optional[_Union[_scorer_pb2.SentimentScore, _Mapping]] = ...) -> None: ...

class WatchCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class AnalyzeBatchRequest(_message.Message):
    __slots__ = ("call_id", "metadata", "utterances")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    metadata: _audio_pb2.CallMetadata
    utterances: _containers.RepeatedCompositeFieldContainer[TextUtterance]
    def __init__(self, call_id: _Optional[str] = ..., metadata: _Optional[_Union[_audio_pb2.CallMetadata, _Mapping]] = ..., utterances: _Optional[_Iterable[_Union[TextUtterance, _Mapping]]] = ...) -> None: ...

class AnalyzeRecordingRequest(_message.Message):
    __slots__ = ("call_id", "start", "data")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    start: RecordingUpload
    data: bytes
    def __init__(self, call_id: _Optional[str] = ..., start: _Optional[_Union[RecordingUpload, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RecordingUpload(_message.Message):
    __slots__ = ("call_id", "metadata", "filename", "content_type", "channel_roles", "speaker_split")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ROLES_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_SPLIT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    metadata: _audio_pb2.CallMetadata
    filename: str
    content_type: str
    channel_roles: _containers.RepeatedScalarFieldContainer[_audio_pb2.ChannelRole]
    speaker_split: _asr_pb2.SpeakerSplit
    def __init__(self, call_id: _Optional[str] = ..., metadata: _Optional[_Union[_audio_pb2.CallMetadata, _Mapping]] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., channel_roles: _Optional[_Iterable[_Union[_audio_pb2.ChannelRole, str]]] = ..., speaker_split: _Optional[_Union[_asr_pb2.SpeakerSplit, str]] = ...) -> None: ...

class AnalyzeBatchResponse(_message.Message):
    __slots__ = ("call_id", "utterances", "summary")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    utterances: _containers.RepeatedCompositeFieldContainer[ScoredUtterance]
    summary: CallSummary
    def __init__(self, call_id: _Optional[str] = ..., utterances: _Optional[_Iterable[_Union[ScoredUtterance, _Mapping]]] = ..., summary: _Optional[_Union[CallSummary, _Mapping]] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class CallRecord(_message.Message):
    __slots__ = ("call_id", "metadata", "status", "started_at", "ended_at", "summary", "events")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    metadata: _audio_pb2.CallMetadata
    status: CallStatus
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    summary: CallSummary
    events: _containers.RepeatedCompositeFieldContainer[ScoredUtterance]
    def __init__(self, call_id: _Optional[str] = ..., metadata: _Optional[_Union[_audio_pb2.CallMetadata, _Mapping]] = ..., status: _Optional[_Union[CallStatus, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary: _Optional[_Union[CallSummary, _Mapping]] = ..., events: _Optional[_Iterable[_Union[ScoredUtterance, _Mapping]]] = ...) -> None: ...
