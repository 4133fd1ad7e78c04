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
    __slots__ = ("text", "source_name", "dry_run", "at")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    text: str
    source_name: str
    dry_run: bool
    at: _timestamp_pb2.Timestamp
    def __init__(self, text: _Optional[str] = ..., source_name: _Optional[str] = ..., dry_run: _Optional[bool] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConsumerStatus(_message.Message):
    __slots__ = ("path", "owned", "share", "limit", "lend", "borrow", "order", "demand", "entitlement", "allocation", "pending_jobs", "running_jobs", "leaf", "pools", "window")
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
    POOLS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
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
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    window: str
    def __init__(self, path: _Optional[str] = ..., owned: _Optional[int] = ..., share: _Optional[float] = ..., limit: _Optional[int] = ..., lend: _Optional[bool] = ..., borrow: _Optional[bool] = ..., order: _Optional[str] = ..., demand: _Optional[int] = ..., entitlement: _Optional[float] = ..., allocation: _Optional[int] = ..., pending_jobs: _Optional[int] = ..., running_jobs: _Optional[int] = ..., leaf: _Optional[bool] = ..., pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ..., window: _Optional[str] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("pool", "owned", "share", "limit", "demand", "entitlement", "allocation", "gpus")
    POOL_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    ENTITLEMENT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    owned: int
    share: float
    limit: int
    demand: int
    entitlement: float
    allocation: int
    gpus: int
    def __init__(self, pool: _Optional[str] = ..., owned: _Optional[int] = ..., share: _Optional[float] = ..., limit: _Optional[int] = ..., demand: _Optional[int] = ..., entitlement: _Optional[float] = ..., allocation: _Optional[int] = ..., gpus: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("name", "pool", "state", "drained", "drain_reason", "gpus", "last_seen", "fake_gpus", "agent_version", "gpu_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    FAKE_GPUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    pool: str
    state: NodeState
    drained: bool
    drain_reason: str
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    last_seen: _timestamp_pb2.Timestamp
    fake_gpus: bool
    agent_version: str
    gpu_type: str
    def __init__(self, name: _Optional[str] = ..., pool: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., drained: _Optional[bool] = ..., drain_reason: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fake_gpus: _Optional[bool] = ..., agent_version: _Optional[str] = ..., gpu_type: _Optional[str] = ...) -> None: ...

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

class Token(_message.Message):
    __slots__ = ("id", "user", "node", "scopes", "created_at", "expires_at", "created_by", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    user: str
    node: bool
    scopes: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    created_by: str
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., user: _Optional[str] = ..., node: _Optional[bool] = ..., scopes: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("user", "node", "scopes", "ttl_seconds")
    USER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    user: str
    node: bool
    scopes: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: float
    def __init__(self, user: _Optional[str] = ..., node: _Optional[bool] = ..., scopes: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("user", "include_revoked")
    USER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    user: str
    include_revoked: bool
    def __init__(self, user: _Optional[str] = ..., include_revoked: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("identity", "kind", "credential", "cluster_admin", "admin_of", "scopes", "submit_to")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ADMIN_FIELD_NUMBER: _ClassVar[int]
    ADMIN_OF_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_TO_FIELD_NUMBER: _ClassVar[int]
    identity: str
    kind: str
    credential: str
    cluster_admin: bool
    admin_of: _containers.RepeatedScalarFieldContainer[str]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    submit_to: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, identity: _Optional[str] = ..., kind: _Optional[str] = ..., credential: _Optional[str] = ..., cluster_admin: _Optional[bool] = ..., admin_of: _Optional[_Iterable[str]] = ..., scopes: _Optional[_Iterable[str]] = ..., submit_to: _Optional[_Iterable[str]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "time", "identity", "credential", "action", "object", "result", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    identity: str
    credential: str
    action: str
    object: str
    result: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., identity: _Optional[str] = ..., credential: _Optional[str] = ..., action: _Optional[str] = ..., object: _Optional[str] = ..., result: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("limit", "before_id", "identity")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    limit: int
    before_id: int
    identity: str
    def __init__(self, limit: _Optional[int] = ..., before_id: _Optional[int] = ..., identity: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
