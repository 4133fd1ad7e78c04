import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from schedulerd.api.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_MINIMIZE: _ClassVar[Direction]
    DIRECTION_MAXIMIZE: _ClassVar[Direction]

class SamplerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_UNSPECIFIED: _ClassVar[SamplerKind]
    SAMPLER_RANDOM: _ClassVar[SamplerKind]
    SAMPLER_GRID: _ClassVar[SamplerKind]
    SAMPLER_TPE: _ClassVar[SamplerKind]

class PrunerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNER_UNSPECIFIED: _ClassVar[PrunerKind]
    PRUNER_NONE: _ClassVar[PrunerKind]
    PRUNER_MEDIAN: _ClassVar[PrunerKind]
    PRUNER_ASHA: _ClassVar[PrunerKind]
    PRUNER_HYPERBAND: _ClassVar[PrunerKind]

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_RUNNING: _ClassVar[ExperimentState]
    EXPERIMENT_DONE: _ClassVar[ExperimentState]
    EXPERIMENT_STOPPED: _ClassVar[ExperimentState]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_WAITING: _ClassVar[TrialState]
    TRIAL_RUNNING: _ClassVar[TrialState]
    TRIAL_COMPLETE: _ClassVar[TrialState]
    TRIAL_PRUNED: _ClassVar[TrialState]
    TRIAL_FAILED: _ClassVar[TrialState]
    TRIAL_STOPPED: _ClassVar[TrialState]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_MINIMIZE: Direction
DIRECTION_MAXIMIZE: Direction
SAMPLER_UNSPECIFIED: SamplerKind
SAMPLER_RANDOM: SamplerKind
SAMPLER_GRID: SamplerKind
SAMPLER_TPE: SamplerKind
PRUNER_UNSPECIFIED: PrunerKind
PRUNER_NONE: PrunerKind
PRUNER_MEDIAN: PrunerKind
PRUNER_ASHA: PrunerKind
PRUNER_HYPERBAND: PrunerKind
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_RUNNING: ExperimentState
EXPERIMENT_DONE: ExperimentState
EXPERIMENT_STOPPED: ExperimentState
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_WAITING: TrialState
TRIAL_RUNNING: TrialState
TRIAL_COMPLETE: TrialState
TRIAL_PRUNED: TrialState
TRIAL_FAILED: TrialState
TRIAL_STOPPED: TrialState

class ParamValue(_message.Message):
    __slots__ = ("float_value", "int_value", "string_value", "bool_value")
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    float_value: float
    int_value: int
    string_value: str
    bool_value: bool
    def __init__(self, float_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class FloatRange(_message.Message):
    __slots__ = ("low", "high", "log", "step")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    log: bool
    step: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., log: _Optional[bool] = ..., step: _Optional[float] = ...) -> None: ...

class IntRange(_message.Message):
    __slots__ = ("low", "high", "log", "step")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    log: bool
    step: int
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ..., log: _Optional[bool] = ..., step: _Optional[int] = ...) -> None: ...

class Categorical(_message.Message):
    __slots__ = ("choices",)
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedCompositeFieldContainer[ParamValue]
    def __init__(self, choices: _Optional[_Iterable[_Union[ParamValue, _Mapping]]] = ...) -> None: ...

class Param(_message.Message):
    __slots__ = ("name", "float_range", "int_range", "categorical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLOAT_RANGE_FIELD_NUMBER: _ClassVar[int]
    INT_RANGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    float_range: FloatRange
    int_range: IntRange
    categorical: Categorical
    def __init__(self, name: _Optional[str] = ..., float_range: _Optional[_Union[FloatRange, _Mapping]] = ..., int_range: _Optional[_Union[IntRange, _Mapping]] = ..., categorical: _Optional[_Union[Categorical, _Mapping]] = ...) -> None: ...

class PrunerSpec(_message.Message):
    __slots__ = ("kind", "min_resource", "max_resource", "reduction_factor", "startup_trials", "warmup_steps")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    STARTUP_TRIALS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    kind: PrunerKind
    min_resource: int
    max_resource: int
    reduction_factor: int
    startup_trials: int
    warmup_steps: int
    def __init__(self, kind: _Optional[_Union[PrunerKind, str]] = ..., min_resource: _Optional[int] = ..., max_resource: _Optional[int] = ..., reduction_factor: _Optional[int] = ..., startup_trials: _Optional[int] = ..., warmup_steps: _Optional[int] = ...) -> None: ...

class ExperimentSpec(_message.Message):
    __slots__ = ("name", "consumer", "user", "command", "env", "working_dir", "params", "metric", "direction", "sampler", "seed", "pruner", "max_trials", "max_parallel", "gpus", "priority")
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
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRUNER_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    consumer: str
    user: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    working_dir: str
    params: _containers.RepeatedCompositeFieldContainer[Param]
    metric: str
    direction: Direction
    sampler: SamplerKind
    seed: int
    pruner: PrunerSpec
    max_trials: int
    max_parallel: int
    gpus: _jobs_pb2.GpuRequest
    priority: int
    def __init__(self, name: _Optional[str] = ..., consumer: _Optional[str] = ..., user: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., working_dir: _Optional[str] = ..., params: _Optional[_Iterable[_Union[Param, _Mapping]]] = ..., metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., sampler: _Optional[_Union[SamplerKind, str]] = ..., seed: _Optional[int] = ..., pruner: _Optional[_Union[PrunerSpec, _Mapping]] = ..., max_trials: _Optional[int] = ..., max_parallel: _Optional[int] = ..., gpus: _Optional[_Union[_jobs_pb2.GpuRequest, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class IntermediateValue(_message.Message):
    __slots__ = ("step", "value")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    step: int
    value: float
    def __init__(self, step: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("number", "job_id", "state", "params", "value", "last_step", "last_value", "reason", "created", "ended", "intermediate")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_FIELD_NUMBER: _ClassVar[int]
    number: int
    job_id: int
    state: TrialState
    params: _containers.MessageMap[str, ParamValue]
    value: float
    last_step: int
    last_value: float
    reason: str
    created: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    intermediate: _containers.RepeatedCompositeFieldContainer[IntermediateValue]
    def __init__(self, number: _Optional[int] = ..., job_id: _Optional[int] = ..., state: _Optional[_Union[TrialState, str]] = ..., params: _Optional[_Mapping[str, ParamValue]] = ..., value: _Optional[float] = ..., last_step: _Optional[int] = ..., last_value: _Optional[float] = ..., reason: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., intermediate: _Optional[_Iterable[_Union[IntermediateValue, _Mapping]]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("id", "spec", "state", "reason", "created", "ended", "trials_total", "trials_finished", "trials_waiting", "trials_running", "best", "trials")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_WAITING_FIELD_NUMBER: _ClassVar[int]
    TRIALS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    id: int
    spec: ExperimentSpec
    state: ExperimentState
    reason: str
    created: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    trials_total: int
    trials_finished: int
    trials_waiting: int
    trials_running: int
    best: Trial
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    def __init__(self, id: _Optional[int] = ..., spec: _Optional[_Union[ExperimentSpec, _Mapping]] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., reason: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trials_total: _Optional[int] = ..., trials_finished: _Optional[int] = ..., trials_waiting: _Optional[int] = ..., trials_running: _Optional[int] = ..., best: _Optional[_Union[Trial, _Mapping]] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ...) -> None: ...

class CreateExperimentRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ExperimentSpec
    def __init__(self, spec: _Optional[_Union[ExperimentSpec, _Mapping]] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("id", "include_intermediate")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INTERMEDIATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    include_intermediate: bool
    def __init__(self, id: _Optional[int] = ..., include_intermediate: _Optional[bool] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("consumer",)
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    def __init__(self, consumer: _Optional[str] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class StopExperimentRequest(_message.Message):
    __slots__ = ("id", "user")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    id: int
    user: str
    def __init__(self, id: _Optional[int] = ..., user: _Optional[str] = ...) -> None: ...

class WatchExperimentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ReportTrialRequest(_message.Message):
    __slots__ = ("experiment_id", "trial", "job_id", "step", "value", "final")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    experiment_id: int
    trial: int
    job_id: int
    step: int
    value: float
    final: bool
    def __init__(self, experiment_id: _Optional[int] = ..., trial: _Optional[int] = ..., job_id: _Optional[int] = ..., step: _Optional[int] = ..., value: _Optional[float] = ..., final: _Optional[bool] = ...) -> None: ...

class ReportTrialResponse(_message.Message):
    __slots__ = ("should_stop", "state", "message")
    SHOULD_STOP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    should_stop: bool
    state: TrialState
    message: str
    def __init__(self, should_stop: _Optional[bool] = ..., state: _Optional[_Union[TrialState, str]] = ..., message: _Optional[str] = ...) -> None: ...
