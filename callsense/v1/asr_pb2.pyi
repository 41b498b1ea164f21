from callsense.v1 import audio_pb2 as _audio_pb2
from callsense.v1 import prosody_pb2 as _prosody_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpeakerSplit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEAKER_SPLIT_UNSPECIFIED: _ClassVar[SpeakerSplit]
    SPEAKER_SPLIT_NONE: _ClassVar[SpeakerSplit]
    SPEAKER_SPLIT_AGENT_FIRST: _ClassVar[SpeakerSplit]
    SPEAKER_SPLIT_CUSTOMER_FIRST: _ClassVar[SpeakerSplit]
SPEAKER_SPLIT_UNSPECIFIED: SpeakerSplit
SPEAKER_SPLIT_NONE: SpeakerSplit
SPEAKER_SPLIT_AGENT_FIRST: SpeakerSplit
SPEAKER_SPLIT_CUSTOMER_FIRST: SpeakerSplit

class RecordingChunk(_message.Message):
    __slots__ = ("call_id", "start", "data")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    start: RecordingStart
    data: bytes
    def __init__(self, call_id: _Optional[str] = ..., start: _Optional[_Union[RecordingStart, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RecordingStart(_message.Message):
    __slots__ = ("call_id", "filename", "content_type", "channel_roles", "speaker_split")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ROLES_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_SPLIT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    filename: str
    content_type: str
    channel_roles: _containers.RepeatedScalarFieldContainer[_audio_pb2.ChannelRole]
    speaker_split: SpeakerSplit
    def __init__(self, call_id: _Optional[str] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., channel_roles: _Optional[_Iterable[_Union[_audio_pb2.ChannelRole, str]]] = ..., speaker_split: _Optional[_Union[SpeakerSplit, str]] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("call_id", "start", "chunk", "end")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    start: _audio_pb2.CallStart
    chunk: _audio_pb2.AudioChunk
    end: _audio_pb2.CallEnd
    def __init__(self, call_id: _Optional[str] = ..., start: _Optional[_Union[_audio_pb2.CallStart, _Mapping]] = ..., chunk: _Optional[_Union[_audio_pb2.AudioChunk, _Mapping]] = ..., end: _Optional[_Union[_audio_pb2.CallEnd, _Mapping]] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("text", "start_ms", "end_ms", "probability")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_ms: int
    end_ms: int
    probability: float
    def __init__(self, text: _Optional[str] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class TranscriptEvent(_message.Message):
    __slots__ = ("call_id", "segment_id", "is_final", "text", "words", "start_ms", "end_ms", "channel", "no_speech_prob", "avg_logprob", "prosody", "unheard_reason")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    PROSODY_FIELD_NUMBER: _ClassVar[int]
    UNHEARD_REASON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    segment_id: int
    is_final: bool
    text: str
    words: _containers.RepeatedCompositeFieldContainer[Word]
    start_ms: int
    end_ms: int
    channel: _audio_pb2.ChannelRole
    no_speech_prob: float
    avg_logprob: float
    prosody: _prosody_pb2.Prosody
    unheard_reason: str
    def __init__(self, call_id: _Optional[str] = ..., segment_id: _Optional[int] = ..., is_final: _Optional[bool] = ..., text: _Optional[str] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., no_speech_prob: _Optional[float] = ..., avg_logprob: _Optional[float] = ..., prosody: _Optional[_Union[_prosody_pb2.Prosody, _Mapping]] = ..., unheard_reason: _Optional[str] = ...) -> None: ...
