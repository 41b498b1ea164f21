from callsense.v1 import chopper_pb2 as _chopper_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SentimentLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SENTIMENT_LABEL_UNSPECIFIED: _ClassVar[SentimentLabel]
    NEGATIVE: _ClassVar[SentimentLabel]
    NEUTRAL: _ClassVar[SentimentLabel]
    POSITIVE: _ClassVar[SentimentLabel]
SENTIMENT_LABEL_UNSPECIFIED: SentimentLabel
NEGATIVE: SentimentLabel
NEUTRAL: SentimentLabel
POSITIVE: SentimentLabel

class ScoreRequest(_message.Message):
    __slots__ = ("call_id", "utterance")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    utterance: _chopper_pb2.Utterance
    def __init__(self, call_id: _Optional[str] = ..., utterance: _Optional[_Union[_chopper_pb2.Utterance, _Mapping]] = ...) -> None: ...

class SentimentScore(_message.Message):
    __slots__ = ("call_id", "utterance_id", "p_negative", "p_neutral", "p_positive", "score", "label", "model_version", "inference_ms", "batch_size", "text_p_negative", "text_p_neutral", "text_p_positive", "tone_fused", "fusion_version")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    P_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    P_NEUTRAL_FIELD_NUMBER: _ClassVar[int]
    P_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEXT_P_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    TEXT_P_NEUTRAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_P_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    TONE_FUSED_FIELD_NUMBER: _ClassVar[int]
    FUSION_VERSION_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    utterance_id: int
    p_negative: float
    p_neutral: float
    p_positive: float
    score: float
    label: SentimentLabel
    model_version: str
    inference_ms: float
    batch_size: int
    text_p_negative: float
    text_p_neutral: float
    text_p_positive: float
    tone_fused: bool
    fusion_version: str
    def __init__(self, call_id: _Optional[str] = ..., utterance_id: _Optional[int] = ..., p_negative: _Optional[float] = ..., p_neutral: _Optional[float] = ..., p_positive: _Optional[float] = ..., score: _Optional[float] = ..., label: _Optional[_Union[SentimentLabel, str]] = ..., model_version: _Optional[str] = ..., inference_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., text_p_negative: _Optional[float] = ..., text_p_neutral: _Optional[float] = ..., text_p_positive: _Optional[float] = ..., tone_fused: _Optional[bool] = ..., fusion_version: _Optional[str] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("utterances",)
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    utterances: _containers.RepeatedCompositeFieldContainer[_chopper_pb2.Utterance]
    def __init__(self, utterances: _Optional[_Iterable[_Union[_chopper_pb2.Utterance, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[SentimentScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[SentimentScore, _Mapping]]] = ...) -> None: ...
