import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_STATE_UNSPECIFIED: _ClassVar[ServiceState]
    SERVICE_ACTIVE: _ClassVar[ServiceState]
    SERVICE_DELETING: _ClassVar[ServiceState]
    SERVICE_DELETED: _ClassVar[ServiceState]

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_WAITING: _ClassVar[ReplicaState]
    REPLICA_STARTING: _ClassVar[ReplicaState]
    REPLICA_READY: _ClassVar[ReplicaState]
    REPLICA_DRAINING: _ClassVar[ReplicaState]
    REPLICA_STOPPING: _ClassVar[ReplicaState]
    REPLICA_ENDED: _ClassVar[ReplicaState]
SERVICE_STATE_UNSPECIFIED: ServiceState
SERVICE_ACTIVE: ServiceState
SERVICE_DELETING: ServiceState
SERVICE_DELETED: ServiceState
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_WAITING: ReplicaState
REPLICA_STARTING: ReplicaState
REPLICA_READY: ReplicaState
REPLICA_DRAINING: ReplicaState
REPLICA_STOPPING: ReplicaState
REPLICA_ENDED: ReplicaState

class ServiceSpec(_message.Message):
    __slots__ = ("name", "consumer", "user", "command", "env", "working_dir", "gpus_per_replica", "min_replicas", "max_replicas", "target_in_flight", "readiness_path", "scale_down_delay_s", "scale_to_zero", "priority", "public", "window_s", "max_queue", "queue_timeout_s", "request_timeout_s")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    READINESS_PATH_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_TO_ZERO_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    consumer: str
    user: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    working_dir: str
    gpus_per_replica: int
    min_replicas: int
    max_replicas: int
    target_in_flight: float
    readiness_path: str
    scale_down_delay_s: float
    scale_to_zero: bool
    priority: int
    public: bool
    window_s: float
    max_queue: int
    queue_timeout_s: float
    request_timeout_s: float
    def __init__(self, name: _Optional[str] = ..., consumer: _Optional[str] = ..., user: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., working_dir: _Optional[str] = ..., gpus_per_replica: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., target_in_flight: _Optional[float] = ..., readiness_path: _Optional[str] = ..., scale_down_delay_s: _Optional[float] = ..., scale_to_zero: _Optional[bool] = ..., priority: _Optional[int] = ..., public: _Optional[bool] = ..., window_s: _Optional[float] = ..., max_queue: _Optional[int] = ..., queue_timeout_s: _Optional[float] = ..., request_timeout_s: _Optional[float] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("number", "job_id", "state", "generation", "node", "address", "in_flight", "reason", "created", "ready_since")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    READY_SINCE_FIELD_NUMBER: _ClassVar[int]
    number: int
    job_id: int
    state: ReplicaState
    generation: int
    node: str
    address: str
    in_flight: int
    reason: str
    created: _timestamp_pb2.Timestamp
    ready_since: _timestamp_pb2.Timestamp
    def __init__(self, number: _Optional[int] = ..., job_id: _Optional[int] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., generation: _Optional[int] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., in_flight: _Optional[int] = ..., reason: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ServiceLoad(_message.Message):
    __slots__ = ("in_flight", "queued", "requests_per_s", "p50_ms", "p99_ms", "requests_total", "failed_total", "reported")
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    in_flight: float
    queued: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests_total: int
    failed_total: int
    reported: _timestamp_pb2.Timestamp
    def __init__(self, in_flight: _Optional[float] = ..., queued: _Optional[float] = ..., requests_per_s: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., requests_total: _Optional[int] = ..., failed_total: _Optional[int] = ..., reported: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ServiceEvent(_message.Message):
    __slots__ = ("time", "kind", "message", "from_replicas", "to_replicas")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FROM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TO_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    kind: str
    message: str
    from_replicas: int
    to_replicas: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., from_replicas: _Optional[int] = ..., to_replicas: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("id", "spec", "state", "generation", "desired_replicas", "ready_replicas", "replicas", "load", "history", "created", "reason", "path", "redacted")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    id: int
    spec: ServiceSpec
    state: ServiceState
    generation: int
    desired_replicas: int
    ready_replicas: int
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    load: ServiceLoad
    history: _containers.RepeatedCompositeFieldContainer[ServiceEvent]
    created: _timestamp_pb2.Timestamp
    reason: str
    path: str
    redacted: bool
    def __init__(self, id: _Optional[int] = ..., spec: _Optional[_Union[ServiceSpec, _Mapping]] = ..., state: _Optional[_Union[ServiceState, str]] = ..., generation: _Optional[int] = ..., desired_replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., load: _Optional[_Union[ServiceLoad, _Mapping]] = ..., history: _Optional[_Iterable[_Union[ServiceEvent, _Mapping]]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., path: _Optional[str] = ..., redacted: _Optional[bool] = ...) -> None: ...

class CreateServiceRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ServiceSpec
    def __init__(self, spec: _Optional[_Union[ServiceSpec, _Mapping]] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("consumer", "include_deleted")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    include_deleted: bool
    def __init__(self, consumer: _Optional[str] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ...) -> None: ...

class UpdateServiceRequest(_message.Message):
    __slots__ = ("name", "spec", "update_mask")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: ServiceSpec
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[ServiceSpec, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("replica", "job_id", "address", "draining")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    replica: int
    job_id: int
    address: str
    draining: bool
    def __init__(self, replica: _Optional[int] = ..., job_id: _Optional[int] = ..., address: _Optional[str] = ..., draining: _Optional[bool] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("service_id", "name", "public", "readiness_path", "max_queue", "queue_timeout_s", "request_timeout_s", "endpoints", "scales_from_zero")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    READINESS_PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FROM_ZERO_FIELD_NUMBER: _ClassVar[int]
    service_id: int
    name: str
    public: bool
    readiness_path: str
    max_queue: int
    queue_timeout_s: float
    request_timeout_s: float
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    scales_from_zero: bool
    def __init__(self, service_id: _Optional[int] = ..., name: _Optional[str] = ..., public: _Optional[bool] = ..., readiness_path: _Optional[str] = ..., max_queue: _Optional[int] = ..., queue_timeout_s: _Optional[float] = ..., request_timeout_s: _Optional[float] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., scales_from_zero: _Optional[bool] = ...) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("version", "routes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    version: int
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, version: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class WatchRoutesRequest(_message.Message):
    __slots__ = ("router",)
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    router: str
    def __init__(self, router: _Optional[str] = ...) -> None: ...

class ReplicaLoad(_message.Message):
    __slots__ = ("replica", "job_id", "ready", "in_flight")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    replica: int
    job_id: int
    ready: bool
    in_flight: int
    def __init__(self, replica: _Optional[int] = ..., job_id: _Optional[int] = ..., ready: _Optional[bool] = ..., in_flight: _Optional[int] = ...) -> None: ...

class ServiceLoadReport(_message.Message):
    __slots__ = ("service_id", "in_flight", "queued", "requests", "failed", "p50_ms", "p99_ms", "replicas", "requests_total", "failed_total")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    service_id: int
    in_flight: int
    queued: int
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaLoad]
    requests_total: int
    failed_total: int
    def __init__(self, service_id: _Optional[int] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., requests: _Optional[int] = ..., failed: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaLoad, _Mapping]]] = ..., requests_total: _Optional[int] = ..., failed_total: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("router", "table_version", "services")
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    router: str
    table_version: int
    services: _containers.RepeatedCompositeFieldContainer[ServiceLoadReport]
    def __init__(self, router: _Optional[str] = ..., table_version: _Optional[int] = ..., services: _Optional[_Iterable[_Union[ServiceLoadReport, _Mapping]]] = ...) -> None: ...

class LoadReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckAccessRequest(_message.Message):
    __slots__ = ("service", "token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    token: str
    def __init__(self, service: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class CheckAccessResponse(_message.Message):
    __slots__ = ("allowed", "http_status", "reason", "user", "cache_s")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CACHE_S_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    http_status: int
    reason: str
    user: str
    cache_s: float
    def __init__(self, allowed: _Optional[bool] = ..., http_status: _Optional[int] = ..., reason: _Optional[str] = ..., user: _Optional[str] = ..., cache_s: _Optional[float] = ...) -> None: ...
