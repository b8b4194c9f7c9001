import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metrics(_message.Message):
    __slots__ = ("accuracy", "loss", "precision", "recall", "f1", "rows_used", "test_rows", "train_seconds")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    ROWS_USED_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    loss: float
    precision: float
    recall: float
    f1: float
    rows_used: int
    test_rows: int
    train_seconds: float
    def __init__(self, accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., rows_used: _Optional[int] = ..., test_rows: _Optional[int] = ..., train_seconds: _Optional[float] = ...) -> None: ...

class Thresholds(_message.Message):
    __slots__ = ("negative_max", "positive_min")
    NEGATIVE_MAX_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_MIN_FIELD_NUMBER: _ClassVar[int]
    negative_max: float
    positive_min: float
    def __init__(self, negative_max: _Optional[float] = ..., positive_min: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("version", "metrics", "thresholds", "dataset_uri", "created_at", "current", "sequence_length", "vocabulary_size")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    version: str
    metrics: Metrics
    thresholds: Thresholds
    dataset_uri: str
    created_at: _timestamp_pb2.Timestamp
    current: bool
    sequence_length: int
    vocabulary_size: int
    def __init__(self, version: _Optional[str] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., dataset_uri: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current: _Optional[bool] = ..., sequence_length: _Optional[int] = ..., vocabulary_size: _Optional[int] = ...) -> None: ...
