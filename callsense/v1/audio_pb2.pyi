from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM16: _ClassVar[AudioEncoding]
    MULAW: _ClassVar[AudioEncoding]
    ALAW: _ClassVar[AudioEncoding]

class ChannelRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_ROLE_UNSPECIFIED: _ClassVar[ChannelRole]
    CUSTOMER: _ClassVar[ChannelRole]
    AGENT: _ClassVar[ChannelRole]
    MIXED: _ClassVar[ChannelRole]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM16: AudioEncoding
MULAW: AudioEncoding
ALAW: AudioEncoding
CHANNEL_ROLE_UNSPECIFIED: ChannelRole
CUSTOMER: ChannelRole
AGENT: ChannelRole
MIXED: ChannelRole

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz", "channels")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    channels: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class CallMetadata(_message.Message):
    __slots__ = ("tenant", "agent", "team", "region", "language", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    agent: str
    team: str
    region: str
    language: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, tenant: _Optional[str] = ..., agent: _Optional[str] = ..., team: _Optional[str] = ..., region: _Optional[str] = ..., language: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CallStart(_message.Message):
    __slots__ = ("call_id", "format", "channel_roles", "metadata")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ROLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    format: AudioFormat
    channel_roles: _containers.RepeatedScalarFieldContainer[ChannelRole]
    metadata: CallMetadata
    def __init__(self, call_id: _Optional[str] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., channel_roles: _Optional[_Iterable[_Union[ChannelRole, str]]] = ..., metadata: _Optional[_Union[CallMetadata, _Mapping]] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("call_id", "seq", "channel", "timestamp_ms", "audio")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    seq: int
    channel: ChannelRole
    timestamp_ms: int
    audio: bytes
    def __init__(self, call_id: _Optional[str] = ..., seq: _Optional[int] = ..., channel: _Optional[_Union[ChannelRole, str]] = ..., timestamp_ms: _Optional[int] = ..., audio: _Optional[bytes] = ...) -> None: ...

class CallEnd(_message.Message):
    __slots__ = ("call_id", "reason")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    reason: str
    def __init__(self, call_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
