from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_PHASE_UNSPECIFIED: _ClassVar[JobPhase]
    PHASE_RUNNING: _ClassVar[JobPhase]
    PHASE_EXITED: _ClassVar[JobPhase]
    PHASE_START_FAILED: _ClassVar[JobPhase]
    PHASE_LOST: _ClassVar[JobPhase]
    PHASE_REFUSED: _ClassVar[JobPhase]
JOB_PHASE_UNSPECIFIED: JobPhase
PHASE_RUNNING: JobPhase
PHASE_EXITED: JobPhase
PHASE_START_FAILED: JobPhase
PHASE_LOST: JobPhase
PHASE_REFUSED: JobPhase

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "attempt", "phase", "exit_code", "pid", "message", "time", "gpu_indices", "stopped_by_node")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_NODE_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    phase: JobPhase
    exit_code: int
    pid: int
    message: str
    time: float
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    stopped_by_node: bool
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., phase: _Optional[_Union[JobPhase, str]] = ..., exit_code: _Optional[int] = ..., pid: _Optional[int] = ..., message: _Optional[str] = ..., time: _Optional[float] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., stopped_by_node: _Optional[bool] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("node", "pool", "gpus", "fake_gpus", "agent_version", "hostname", "jobs", "address")
    NODE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    FAKE_GPUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node: str
    pool: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    fake_gpus: bool
    agent_version: str
    hostname: str
    jobs: _containers.RepeatedCompositeFieldContainer[JobReport]
    address: str
    def __init__(self, node: _Optional[str] = ..., pool: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., fake_gpus: _Optional[bool] = ..., agent_version: _Optional[str] = ..., hostname: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[JobReport, _Mapping]]] = ..., address: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("shutting_down",)
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    shutting_down: bool
    def __init__(self, shutting_down: _Optional[bool] = ...) -> None: ...

class LogData(_message.Message):
    __slots__ = ("request_id", "data", "found", "next_offset")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    data: bytes
    found: bool
    next_offset: int
    def __init__(self, request_id: _Optional[int] = ..., data: _Optional[bytes] = ..., found: _Optional[bool] = ..., next_offset: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "report", "log_data")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LOG_DATA_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    report: JobReport
    log_data: LogData
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., report: _Optional[_Union[JobReport, _Mapping]] = ..., log_data: _Optional[_Union[LogData, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("heartbeat_interval", "epoch", "lease_seconds", "vouch_key")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VOUCH_KEY_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: float
    epoch: int
    lease_seconds: float
    vouch_key: bytes
    def __init__(self, heartbeat_interval: _Optional[float] = ..., epoch: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., vouch_key: _Optional[bytes] = ...) -> None: ...

class ElasticWorker(_message.Message):
    __slots__ = ("worker_id", "gpu_index")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    gpu_index: int
    def __init__(self, worker_id: _Optional[int] = ..., gpu_index: _Optional[int] = ...) -> None: ...

class ElasticSpec(_message.Message):
    __slots__ = ("store_address", "min", "max", "initial_worker_ids", "workers", "join")
    STORE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    INITIAL_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    store_address: str
    min: int
    max: int
    initial_worker_ids: _containers.RepeatedScalarFieldContainer[int]
    workers: _containers.RepeatedCompositeFieldContainer[ElasticWorker]
    join: bool
    def __init__(self, store_address: _Optional[str] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., initial_worker_ids: _Optional[_Iterable[int]] = ..., workers: _Optional[_Iterable[_Union[ElasticWorker, _Mapping]]] = ..., join: _Optional[bool] = ...) -> None: ...

class StartJob(_message.Message):
    __slots__ = ("job_id", "attempt", "command", "env", "working_dir", "gpu_indices", "consumer", "user", "name", "node_rank", "num_nodes", "elastic", "allow_root", "master_address", "array_id", "array_index", "epoch")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    ELASTIC_FIELD_NUMBER: _ClassVar[int]
    ALLOW_ROOT_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ARRAY_ID_FIELD_NUMBER: _ClassVar[int]
    ARRAY_INDEX_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    working_dir: str
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    consumer: str
    user: str
    name: str
    node_rank: int
    num_nodes: int
    elastic: ElasticSpec
    allow_root: bool
    master_address: str
    array_id: int
    array_index: int
    epoch: int
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., working_dir: _Optional[str] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., consumer: _Optional[str] = ..., user: _Optional[str] = ..., name: _Optional[str] = ..., node_rank: _Optional[int] = ..., num_nodes: _Optional[int] = ..., elastic: _Optional[_Union[ElasticSpec, _Mapping]] = ..., allow_root: _Optional[bool] = ..., master_address: _Optional[str] = ..., array_id: _Optional[int] = ..., array_index: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ResizeJob(_message.Message):
    __slots__ = ("job_id", "attempt", "release_gpus", "grace_seconds", "add", "reason", "epoch")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_GPUS_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    release_gpus: _containers.RepeatedScalarFieldContainer[int]
    grace_seconds: float
    add: _containers.RepeatedCompositeFieldContainer[ElasticWorker]
    reason: str
    epoch: int
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., release_gpus: _Optional[_Iterable[int]] = ..., grace_seconds: _Optional[float] = ..., add: _Optional[_Iterable[_Union[ElasticWorker, _Mapping]]] = ..., reason: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class StopJob(_message.Message):
    __slots__ = ("job_id", "attempt", "grace_seconds", "reason", "epoch")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    grace_seconds: float
    reason: str
    epoch: int
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., grace_seconds: _Optional[float] = ..., reason: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class AckReport(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReadLog(_message.Message):
    __slots__ = ("request_id", "job_id", "offset", "max_bytes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    job_id: int
    offset: int
    max_bytes: int
    def __init__(self, request_id: _Optional[int] = ..., job_id: _Optional[int] = ..., offset: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class DaemonMessage(_message.Message):
    __slots__ = ("registered", "start", "stop", "ack", "read_log", "resize", "heartbeat")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    READ_LOG_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    start: StartJob
    stop: StopJob
    ack: AckReport
    read_log: ReadLog
    resize: ResizeJob
    heartbeat: Heartbeat
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., start: _Optional[_Union[StartJob, _Mapping]] = ..., stop: _Optional[_Union[StopJob, _Mapping]] = ..., ack: _Optional[_Union[AckReport, _Mapping]] = ..., read_log: _Optional[_Union[ReadLog, _Mapping]] = ..., resize: _Optional[_Union[ResizeJob, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...
