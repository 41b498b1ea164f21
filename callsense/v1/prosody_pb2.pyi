from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Prosody(_message.Message):
    __slots__ = ("rms_dbfs", "pitch_mean_hz", "pitch_std_hz", "speaking_rate_wps", "mfcc_mean", "mfcc_std", "voiced_fraction")
    RMS_DBFS_FIELD_NUMBER: _ClassVar[int]
    PITCH_MEAN_HZ_FIELD_NUMBER: _ClassVar[int]
    PITCH_STD_HZ_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_RATE_WPS_FIELD_NUMBER: _ClassVar[int]
    MFCC_MEAN_FIELD_NUMBER: _ClassVar[int]
    MFCC_STD_FIELD_NUMBER: _ClassVar[int]
    VOICED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    rms_dbfs: float
    pitch_mean_hz: float
    pitch_std_hz: float
    speaking_rate_wps: float
    mfcc_mean: _containers.RepeatedScalarFieldContainer[float]
    mfcc_std: _containers.RepeatedScalarFieldContainer[float]
    voiced_fraction: float
    def __init__(self, rms_dbfs: _Optional[float] = ..., pitch_mean_hz: _Optional[float] = ..., pitch_std_hz: _Optional[float] = ..., speaking_rate_wps: _Optional[float] = ..., mfcc_mean: _Optional[_Iterable[float]] = ..., mfcc_std: _Optional[_Iterable[float]] = ..., voiced_fraction: _Optional[float] = ...) -> None: ...
