from callsense.v1 import asr_pb2 as _asr_pb2
from callsense.v1 import audio_pb2 as _audio_pb2
from callsense.v1 import prosody_pb2 as _prosody_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PiiKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_KIND_UNSPECIFIED: _ClassVar[PiiKind]
    EMAIL: _ClassVar[PiiKind]
    PHONE: _ClassVar[PiiKind]
    CARD_NUMBER: _ClassVar[PiiKind]
    NATIONAL_ID: _ClassVar[PiiKind]
    IBAN: _ClassVar[PiiKind]
    POSTAL_ADDRESS: _ClassVar[PiiKind]
    DATE_OF_BIRTH: _ClassVar[PiiKind]
    PERSON_NAME: _ClassVar[PiiKind]
    CARD_SECURITY_CODE: _ClassVar[PiiKind]
PII_KIND_UNSPECIFIED: PiiKind
EMAIL: PiiKind
PHONE: PiiKind
CARD_NUMBER: PiiKind
NATIONAL_ID: PiiKind
IBAN: PiiKind
POSTAL_ADDRESS: PiiKind
DATE_OF_BIRTH: PiiKind
PERSON_NAME: PiiKind
CARD_SECURITY_CODE: PiiKind

class ChopRequest(_message.Message):
    __slots__ = ("call_id", "transcript", "end", "resume")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    transcript: _asr_pb2.TranscriptEvent
    end: _audio_pb2.CallEnd
    resume: ChopResume
    def __init__(self, call_id: _Optional[str] = ..., transcript: _Optional[_Union[_asr_pb2.TranscriptEvent, _Mapping]] = ..., end: _Optional[_Union[_audio_pb2.CallEnd, _Mapping]] = ..., resume: _Optional[_Union[ChopResume, _Mapping]] = ...) -> None: ...

class ChopResume(_message.Message):
    __slots__ = ("next_utterance_id", "previous_text")
    NEXT_UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TEXT_FIELD_NUMBER: _ClassVar[int]
    next_utterance_id: int
    previous_text: str
    def __init__(self, next_utterance_id: _Optional[int] = ..., previous_text: _Optional[str] = ...) -> None: ...

class PiiSpan(_message.Message):
    __slots__ = ("kind", "start", "end")
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    kind: PiiKind
    start: int
    end: int
    def __init__(self, kind: _Optional[_Union[PiiKind, str]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Utterance(_message.Message):
    __slots__ = ("call_id", "utterance_id", "channel", "start_ms", "end_ms", "text", "token_count", "pii", "prosody", "previous_text", "source_segment_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    PII_FIELD_NUMBER: _ClassVar[int]
    PROSODY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    utterance_id: int
    channel: _audio_pb2.ChannelRole
    start_ms: int
    end_ms: int
    text: str
    token_count: int
    pii: _containers.RepeatedCompositeFieldContainer[PiiSpan]
    prosody: _prosody_pb2.Prosody
    previous_text: str
    source_segment_id: int
    def __init__(self, call_id: _Optional[str] = ..., utterance_id: _Optional[int] = ..., channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., text: _Optional[str] = ..., token_count: _Optional[int] = ..., pii: _Optional[_Iterable[_Union[PiiSpan, _Mapping]]] = ..., prosody: _Optional[_Union[_prosody_pb2.Prosody, _Mapping]] = ..., previous_text: _Optional[str] = ..., source_segment_id: _Optional[int] = ...) -> None: ...
