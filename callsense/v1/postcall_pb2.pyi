from callsense.v1 import audio_pb2 as _audio_pb2
from callsense.v1 import scorer_pb2 as _scorer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrendDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TREND_DIRECTION_UNSPECIFIED: _ClassVar[TrendDirection]
    TREND_DOWN: _ClassVar[TrendDirection]
    TREND_UP: _ClassVar[TrendDirection]

class TagSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TAG_SOURCE_UNSPECIFIED: _ClassVar[TagSource]
    TAG_SOURCE_RULES: _ClassVar[TagSource]
    TAG_SOURCE_MODEL: _ClassVar[TagSource]
    TAG_SOURCE_LLM: _ClassVar[TagSource]
TREND_DIRECTION_UNSPECIFIED: TrendDirection
TREND_DOWN: TrendDirection
TREND_UP: TrendDirection
TAG_SOURCE_UNSPECIFIED: TagSource
TAG_SOURCE_RULES: TagSource
TAG_SOURCE_MODEL: TagSource
TAG_SOURCE_LLM: TagSource

class ReportRequest(_message.Message):
    __slots__ = ("call_id", "utterances")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    utterances: _containers.RepeatedCompositeFieldContainer[UtteranceScore]
    def __init__(self, call_id: _Optional[str] = ..., utterances: _Optional[_Iterable[_Union[UtteranceScore, _Mapping]]] = ...) -> None: ...

class UtteranceScore(_message.Message):
    __slots__ = ("call_id", "utterance_id", "channel", "start_ms", "end_ms", "text", "label", "p_negative", "p_neutral", "p_positive", "score", "model_version", "inference_ms")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    P_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    P_NEUTRAL_FIELD_NUMBER: _ClassVar[int]
    P_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    utterance_id: int
    channel: _audio_pb2.ChannelRole
    start_ms: int
    end_ms: int
    text: str
    label: _scorer_pb2.SentimentLabel
    p_negative: float
    p_neutral: float
    p_positive: float
    score: float
    model_version: str
    inference_ms: float
    def __init__(self, call_id: _Optional[str] = ..., utterance_id: _Optional[int] = ..., channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., text: _Optional[str] = ..., label: _Optional[_Union[_scorer_pb2.SentimentLabel, str]] = ..., p_negative: _Optional[float] = ..., p_neutral: _Optional[float] = ..., p_positive: _Optional[float] = ..., score: _Optional[float] = ..., model_version: _Optional[str] = ..., inference_ms: _Optional[float] = ...) -> None: ...

class CallReport(_message.Message):
    __slots__ = ("lines", "spikes", "turning_points", "quarters", "objection_tags", "customer_avg_sentiment", "agent_avg_sentiment")
    LINES_FIELD_NUMBER: _ClassVar[int]
    SPIKES_FIELD_NUMBER: _ClassVar[int]
    TURNING_POINTS_FIELD_NUMBER: _ClassVar[int]
    QUARTERS_FIELD_NUMBER: _ClassVar[int]
    OBJECTION_TAGS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_AVG_SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_AVG_SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedScalarFieldContainer[str]
    spikes: _containers.RepeatedCompositeFieldContainer[Spike]
    turning_points: _containers.RepeatedCompositeFieldContainer[TurningPoint]
    quarters: _containers.RepeatedCompositeFieldContainer[QuarterStats]
    objection_tags: _containers.RepeatedCompositeFieldContainer[ObjectionTag]
    customer_avg_sentiment: float
    agent_avg_sentiment: float
    def __init__(self, lines: _Optional[_Iterable[str]] = ..., spikes: _Optional[_Iterable[_Union[Spike, _Mapping]]] = ..., turning_points: _Optional[_Iterable[_Union[TurningPoint, _Mapping]]] = ..., quarters: _Optional[_Iterable[_Union[QuarterStats, _Mapping]]] = ..., objection_tags: _Optional[_Iterable[_Union[ObjectionTag, _Mapping]]] = ..., customer_avg_sentiment: _Optional[float] = ..., agent_avg_sentiment: _Optional[float] = ...) -> None: ...

class Spike(_message.Message):
    __slots__ = ("at_ms", "utterance_id", "channel", "score", "drop", "topic", "text", "line")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    utterance_id: int
    channel: _audio_pb2.ChannelRole
    score: float
    drop: float
    topic: str
    text: str
    line: str
    def __init__(self, at_ms: _Optional[int] = ..., utterance_id: _Optional[int] = ..., channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., score: _Optional[float] = ..., drop: _Optional[float] = ..., topic: _Optional[str] = ..., text: _Optional[str] = ..., line: _Optional[str] = ...) -> None: ...

class TurningPoint(_message.Message):
    __slots__ = ("at_ms", "utterance_id", "direction", "from_score", "to_score", "topic", "line")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    FROM_SCORE_FIELD_NUMBER: _ClassVar[int]
    TO_SCORE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    utterance_id: int
    direction: TrendDirection
    from_score: float
    to_score: float
    topic: str
    line: str
    def __init__(self, at_ms: _Optional[int] = ..., utterance_id: _Optional[int] = ..., direction: _Optional[_Union[TrendDirection, str]] = ..., from_score: _Optional[float] = ..., to_score: _Optional[float] = ..., topic: _Optional[str] = ..., line: _Optional[str] = ...) -> None: ...

class QuarterStats(_message.Message):
    __slots__ = ("quarter", "start_ms", "end_ms", "customer_avg", "agent_avg", "utterances")
    QUARTER_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_AVG_FIELD_NUMBER: _ClassVar[int]
    AGENT_AVG_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    quarter: int
    start_ms: int
    end_ms: int
    customer_avg: float
    agent_avg: float
    utterances: int
    def __init__(self, quarter: _Optional[int] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., customer_avg: _Optional[float] = ..., agent_avg: _Optional[float] = ..., utterances: _Optional[int] = ...) -> None: ...

class ObjectionTag(_message.Message):
    __slots__ = ("tag", "utterance_id", "channel", "start_ms", "end_ms", "text", "confidence", "source")
    TAG_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    tag: str
    utterance_id: int
    channel: _audio_pb2.ChannelRole
    start_ms: int
    end_ms: int
    text: str
    confidence: float
    source: TagSource
    def __init__(self, tag: _Optional[str] = ..., utterance_id: _Optional[int] = ..., channel: _Optional[_Union[_audio_pb2.ChannelRole, str]] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., text: _Optional[str] = ..., confidence: _Optional[float] = ..., source: _Optional[_Union[TagSource, str]] = ...) -> None: ...
