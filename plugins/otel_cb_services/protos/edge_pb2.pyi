from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class InferenceRequest(_message.Message):
    __slots__ = ("request_id", "prompt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ...) -> None: ...

class InferenceChunk(_message.Message):
    __slots__ = ("request_id", "text", "index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    index: int
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ResourceUsageRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("agent_id", "cpu", "memory_mb")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    cpu: float
    memory_mb: float
    def __init__(self, agent_id: _Optional[str] = ..., cpu: _Optional[float] = ..., memory_mb: _Optional[float] = ...) -> None: ...

class UsageSample(_message.Message):
    __slots__ = ("agent_id", "cpu")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    cpu: float
    def __init__(self, agent_id: _Optional[str] = ..., cpu: _Optional[float] = ...) -> None: ...

class UsageSummary(_message.Message):
    __slots__ = ("samples", "mean_cpu")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MEAN_CPU_FIELD_NUMBER: _ClassVar[int]
    samples: int
    mean_cpu: float
    def __init__(self, samples: _Optional[int] = ..., mean_cpu: _Optional[float] = ...) -> None: ...
