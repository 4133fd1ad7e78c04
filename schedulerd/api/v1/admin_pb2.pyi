import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    UP: _ClassVar[NodeState]
    UNREACHABLE: _ClassVar[NodeState]
    DOWN: _ClassVar[NodeState]
NODE_STATE_UNSPECIFIED: NodeState
UP: NodeState
UNREACHABLE: NodeState
DOWN: NodeState

class Policy(_message.Message):
    __slots__ = ("text", "source_name", "version", "applied_at")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    text: str
    source_name: str
    version: int
    applied_at: _timestamp_pb2.Timestamp
    def __init__(self, text: _Optional[str] = ..., source_name: _Optional[str] = ..., version: _Optional[int] = ..., applied_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("text", "source_name", "dry_run")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    text: str
    source_name: str
    dry_run: bool
    def __init__(self, text: _Optional[str] = ..., source_name: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ConsumerStatus(_message.Message):
    __slots__ = ("path", "owned", "share", "limit", "lend", "borrow", "order", "demand", "entitlement", "allocation", "pending_jobs", "running_jobs", "leaf")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    LEND_FIELD_NUMBER: _ClassVar[int]
    BORROW_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    ENTITLEMENT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    PENDING_JOBS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    path: str
    owned: int
    share: float
    limit: int
    lend: bool
    borrow: bool
    order: str
    demand: int
    entitlement: float
    allocation: int
    pending_jobs: int
    running_jobs: int
    leaf: bool
    def __init__(self, path: _Optional[str] = ..., owned: _Optional[int] = ..., share: _Optional[float] = ..., limit: _Optional[int] = ..., lend: _Optional[bool] = ..., borrow: _Optional[bool] = ..., order: _Optional[str] = ..., demand: _Optional[int] = ..., entitlement: _Optional[float] = ..., allocation: _Optional[int] = ..., pending_jobs: _Optional[int] = ..., running_jobs: _Optional[int] = ..., leaf: _Optional[bool] = ...) -> None: ...

class ApplyPolicyResponse(_message.Message):
    __slots__ = ("applied", "version", "consumers")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    version: int
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerStatus]
    def __init__(self, applied: _Optional[bool] = ..., version: _Optional[int] = ..., consumers: _Optional[_Iterable[_Union[ConsumerStatus, _Mapping]]] = ...) -> None: ...

class ListConsumersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConsumersResponse(_message.Message):
    __slots__ = ("consumers", "total_gpus")
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GPUS_FIELD_NUMBER: _ClassVar[int]
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerStatus]
    total_gpus: int
    def __init__(self, consumers: _Optional[_Iterable[_Union[ConsumerStatus, _Mapping]]] = ..., total_gpus: _Optional[int] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_bytes", "job_id", "fenced_job_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FENCED_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_bytes: int
    job_id: int
    fenced_job_id: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., job_id: _Optional[int] = ..., fenced_job_id: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "pool", "state", "drained", "drain_reason", "gpus", "last_seen", "fake_gpus", "agent_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    FAKE_GPUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    pool: str
    state: NodeState
    drained: bool
    drain_reason: str
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    last_seen: _timestamp_pb2.Timestamp
    fake_gpus: bool
    agent_version: str
    def __init__(self, name: _Optional[str] = ..., pool: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., drained: _Optional[bool] = ..., drain_reason: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fake_gpus: _Optional[bool] = ..., agent_version: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("node", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: str
    reason: str
    def __init__(self, node: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UndrainNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ForgetNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ForgetNodeResponse(_message.Message):
    __slots__ = ("requeued_job_ids", "released_gpus")
    REQUEUED_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_GPUS_FIELD_NUMBER: _ClassVar[int]
    requeued_job_ids: _containers.RepeatedScalarFieldContainer[int]
    released_gpus: int
    def __init__(self, requeued_job_ids: _Optional[_Iterable[int]] = ..., released_gpus: _Optional[int] = ...) -> None: ...
