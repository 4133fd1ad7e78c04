"""What the API accepts: a bound on every count, length and number a request may carry.

Each `check_*` function takes one message and returns None when it is within bounds, or
a `Refusal` naming the first field that is not ("spec.command: 70,000 bytes of argv, at
most 65,536"). They are pure: no I/O, no clock, no policy, nothing raised for any message
protobuf can decode. They check shape only (sizes, syntax, finite numbers); whether a
consumer exists, a user may submit there or a job fits the cluster is the daemon's
business (core.check_submission), as is who may call what.

The daemon calls `check_request(request)` before a servicer touches the request, and
answers INVALID_ARGUMENT with the refusal's message. The limits are here, at the top,
as named constants: the policy loader, the experiment loader and the core use the same
numbers (schedulerd/policy, schedulerd/hpo/spec.py, core/submission.py).

This module imports only the standard library at run time (the generated types are for
the type checker), so loaders and the CLI may use its constants and name rules freely.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schedulerd.api.v1 import admin_pb2, agent_pb2, experiments_pb2, jobs_pb2, serving_pb2

KIB = 1024
MIB = 1024 * KIB
YEAR_S = 366 * 86400.0  # a duration of "at most a year": a leap year's seconds

# -- transport ---------------------------------------------------------------------------
# The gRPC max receive (and send) size the daemon and its clients set. A job's spec is
# bounded far below this (64 KiB of argv, 64 KiB of env); a batch of 1,000 such specs is
# not: it fits here or is refused by gRPC as RESOURCE_EXHAUSTED. Pages of answers
# (ListJobs) are cut to MAX_PAGE_BYTES so that any client can read them.
MAX_MESSAGE_BYTES = 16 * MIB
MAX_PAGE_BYTES = 4 * MIB
# The largest log chunk the daemon sends or asks an agent for (StreamLogs, ReadLog).
MAX_LOG_CHUNK_BYTES = 1 * MIB

# -- names -------------------------------------------------------------------------------
# A consumer's name: lowercase so that paths are unambiguous in CLIs, logs and URLs.
CONSUMER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
CONSUMER_NAME_RULE = "lowercase letters, digits, '_', '.' and '-', starting with a letter or digit"
MAX_CONSUMER_NAME = 64
MAX_CONSUMER_PATH = 256  # "/research/vision": every name, and a "/" before each
# A Unix-ish user name (useradd's default rule, 32 characters at most).
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
USER_NAME_RULE = (
    "a user name: lowercase letters, digits, '_', '.' and '-', starting with a letter "
    "or '_', at most 32 characters"
)
MAX_USER = 64  # a user field that is not checked for syntax (a filter, a credential's name)
# A node's name: a hostname label.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
NODE_NAME_RULE = (
    "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 characters"
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# -- jobs --------------------------------------------------------------------------------
MAX_GPUS = 1_000_000  # GPUs a job (or a consumer's owned or limit) may name, in any cluster
MAX_PRIORITY = 1_000_000  # priority within -MAX_PRIORITY..MAX_PRIORITY
MAX_JOB_NAME = 256
MAX_ARGS = 1024  # argv entries
MAX_ARGV_BYTES = 64 * KIB  # UTF-8 bytes of all of argv together
MAX_ENV = 256  # environment entries
MAX_ENV_NAME = 256
MAX_ENV_VALUE = 32 * KIB
MAX_ENV_BYTES = 64 * KIB  # UTF-8 bytes of every name and value together
MAX_PATH = 4096  # a working directory (Linux's PATH_MAX)
MAX_BATCH = 1000  # jobs in one SubmitJobs
MAX_ARRAY_TEXT = 1024  # characters of SubmitJobRequest.array (schedulerd/arrays.py)
MAX_WATCH_IDS = 10_000  # ids in one WatchJobs
MAX_STATES = 16  # states in one ListJobs filter
MAX_PAGE_TOKEN = 20  # digits of a ListJobs page token (a job id)
MAX_ID = 2**63 - 1  # SQLite's integers: job ids, log offsets, steps

# -- admin -------------------------------------------------------------------------------
MAX_POLICY_BYTES = 1 * MIB  # a policy's text (the policy loader refuses more, too)
MAX_SOURCE_NAME = 256
MAX_DRAIN_REASON = 1024
MIN_TOKEN_TTL_S = 60.0
MAX_TOKEN_TTL_S = YEAR_S
MAX_SCOPES = 16
MAX_TOKEN_ID = 128
MAX_IDENTITY = 128  # an audit filter: a user, or node:NAME

# -- agents ------------------------------------------------------------------------------
MAX_NODE_GPUS = 64
MAX_GPU_INDEX = 1023  # indices 0..1023
MAX_GPU_TEXT = 128  # a GPU's uuid or model
MAX_GPU_MEMORY = 2**50  # 1 PiB: a GPU reporting more is broken, not big
MAX_AGENT_TEXT = 256  # hostname, address, agent_version, pool
MAX_REPORTS = 10_000  # job reports in one Register
MAX_REPORT_MESSAGE = 4 * KIB

# -- experiments -------------------------------------------------------------------------
MAX_PARAMS = 64
MAX_PARAM_NAME = 64
MAX_CHOICES = 1000
MAX_CHOICE_TEXT = 1024
MAX_EXPERIMENT_NUMBER = 1e15  # |low|, |high|, |step| of a range: exact in a double
MAX_TRIALS = 100_000
MAX_PARALLEL = 1000
MAX_SEED = 2**32 - 1  # what numpy's generators (Optuna's samplers) accept
MAX_PRUNER_NUMBER = 1_000_000_000  # resources, steps, factors, startup trials
MAX_METRIC = 256


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the field (dotted, as in the request) and a message
    that names it, ready for an INVALID_ARGUMENT status."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def _no(field: str, why: str) -> Refusal:
    return Refusal(field, f"{field}: {why}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _n(x: int | float) -> str:
    """A number in a message: 65,536; 1e+15; 0.5."""
    if isinstance(x, float) and not (x.is_integer() and abs(x) < 1e15):
        return f"{x:g}"
    return f"{int(x):,}"


# -- pieces ------------------------------------------------------------------------------


def check_text(
    value: str, field: str, most: int, *, required: bool = False, nul: bool = False
) -> Refusal | None:
    """Text of at most `most` characters; without NUL unless `nul`."""
    if required and not value:
        return _no(field, "is required")
    if len(value) > most:
        return _no(field, f"{_n(len(value))} characters, at most {_n(most)}")
    if not nul and "\0" in value:
        return _no(field, "contains a NUL character")
    return None


def check_consumer_path(value: str, field: str, *, filter_: bool = False) -> Refusal | None:
    """A consumer path: "/" or "/a/b", each name a consumer name. As a filter, empty
    (everything) and a trailing "/" are allowed too."""
    if filter_ and value in ("", "/"):
        return None
    if len(value) > MAX_CONSUMER_PATH:
        return _no(field, f"{_n(len(value))} characters, at most {_n(MAX_CONSUMER_PATH)}")
    if not value.startswith("/"):
        return _no(field, f"{_show(value)} is not a consumer path like /team/project")
    if value == "/":
        return None
    body = value[1:-1] if filter_ and value.endswith("/") else value[1:]
    for name in body.split("/"):
        if not CONSUMER_NAME.fullmatch(name) or len(name) > MAX_CONSUMER_NAME:
            return _no(
                field,
                f"{_show(value)} is not a consumer path: names use {CONSUMER_NAME_RULE}, "
                f"at most {MAX_CONSUMER_NAME} characters each",
            )
    return None


def check_user_name(value: str, field: str) -> Refusal | None:
    if not USER_NAME.fullmatch(value):
        return _no(field, f"{_show(value)} is not {USER_NAME_RULE}")
    return None


def check_node_name(value: str, field: str) -> Refusal | None:
    if not NODE_NAME.fullmatch(value):
        return _no(field, f"{_show(value)} is not a node name: use {NODE_NAME_RULE}")
    return None


def check_argv(command: Iterable[str], field: str) -> Refusal | None:
    """1..MAX_ARGS arguments, MAX_ARGV_BYTES in all, no NUL, a program first."""
    args = list(command)
    if not args or not args[0]:
        return _no(field, "a command (argv) is required")
    if len(args) > MAX_ARGS:
        return _no(field, f"{_n(len(args))} arguments, at most {_n(MAX_ARGS)}")
    total = 0
    for i, arg in enumerate(args):
        if "\0" in arg:
            return _no(f"{field}[{i}]", "contains a NUL character")
        total += _utf8_len(arg)
        if total > MAX_ARGV_BYTES:
            total += sum(_utf8_len(a) for a in args[i + 1 :])
            return _no(field, f"{_n(total)} bytes of argv, at most {_n(MAX_ARGV_BYTES)}")
    return None


def check_env(env: Mapping[str, str], field: str) -> Refusal | None:
    if len(env) > MAX_ENV:
        return _no(field, f"{_n(len(env))} variables, at most {_n(MAX_ENV)}")
    total = 0
    for name in sorted(env):
        value = env[name]
        if not ENV_NAME.fullmatch(name) or len(name) > MAX_ENV_NAME:
            return _no(
                field,
                f"{_show(name)} is not a variable name: letters, digits and '_', not "
                f"starting with a digit, at most {MAX_ENV_NAME} characters",
            )
        where = f"{field}[{name}]"
        if "\0" in value:
            return _no(where, "contains a NUL character")
        size = _utf8_len(value)
        if size > MAX_ENV_VALUE:
            return _no(where, f"{_n(size)} bytes, at most {_n(MAX_ENV_VALUE)}")
        total += len(name) + size
    if total > MAX_ENV_BYTES:
        return _no(field, f"{_n(total)} bytes of environment, at most {_n(MAX_ENV_BYTES)}")
    return None


def check_working_dir(value: str, field: str) -> Refusal | None:
    """Empty (the agent's job directory) or an absolute path."""
    problem = check_text(value, field, MAX_PATH)
    if problem:
        return problem
    if value and not value.startswith("/"):
        return _no(field, f"{_show(value)} is not an absolute path (or empty)")
    return None


def check_gpus(gmin: int, gmax: int, field: str) -> Refusal | None:
    """min >= 1; max 0 means min (a rigid job), else min..MAX_GPUS."""
    if gmin < 1:
        return _no(f"{field}.min", "a job needs at least 1 GPU")
    if gmin > MAX_GPUS:
        return _no(f"{field}.min", f"{_n(gmin)} GPUs, at most {_n(MAX_GPUS)}")
    if gmax and gmax < gmin:
        return _no(f"{field}.max", f"{_n(gmax)} is below min {_n(gmin)}")
    if gmax > MAX_GPUS:
        return _no(f"{field}.max", f"{_n(gmax)} GPUs, at most {_n(MAX_GPUS)}")
    return None


def check_priority(value: int, field: str) -> Refusal | None:
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        return _no(field, f"{_n(value)} is outside -{_n(MAX_PRIORITY)}..{_n(MAX_PRIORITY)}")
    return None


def check_id(value: int, field: str) -> Refusal | None:
    if value < 1:
        return _no(field, "an id is required")
    if value > MAX_ID:
        return _no(field, f"{_n(value)} is not an id (at most {_n(MAX_ID)})")
    return None


def _check_count(values: Collection[Any], field: str, most: int, what: str) -> Refusal | None:
    if len(values) > most:
        return _no(field, f"{_n(len(values))} {what}, at most {_n(most)}")
    return None


def _check_number(
    value: float, field: str, most: float, *, least: float | None = None
) -> Refusal | None:
    """A finite number within least..most (least: -most when not given)."""
    low = -most if least is None else least
    if not math.isfinite(value):
        return _no(field, f"must be a finite number, got {value}")
    if not low <= value <= most:
        return _no(field, f"{_n(value)} is outside {_n(low)}..{_n(most)}")
    return None


def _show(value: str) -> str:
    """A value in a message: quoted, and cut short when long."""
    return repr(value if len(value) <= 64 else value[:64] + "...")


def _utf8_len(text: str) -> int:
    # len(text.encode()) without building the bytes when the text is plain ASCII.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _first(*problems: Refusal | None) -> Refusal | None:
    for p in problems:
        if p is not None:
            return p
    return None


# -- jobs --------------------------------------------------------------------------------


def check_job_spec(spec: jobs_pb2.JobSpec, field: str = "spec") -> Refusal | None:
    return _first(
        check_consumer_path(spec.consumer, _join(field, "consumer")),
        check_text(spec.user, _join(field, "user"), MAX_USER),
        check_text(spec.name, _join(field, "name"), MAX_JOB_NAME),
        check_argv(spec.command, _join(field, "command")),
        check_env(spec.env, _join(field, "env")),
        check_working_dir(spec.working_dir, _join(field, "working_dir")),
        check_gpus(spec.gpus.min, spec.gpus.max, _join(field, "gpus")),
        check_priority(spec.priority, _join(field, "priority")),
        _check_number(spec.time_limit_seconds, _join(field, "time_limit_seconds"), YEAR_S, least=0),
        check_node_name(spec.pool, _join(field, "pool")) if spec.pool else None,
    )


def check_submit_job(request: jobs_pb2.SubmitJobRequest) -> Refusal | None:
    # The array's syntax and size are the handler's (schedulerd/arrays.py); its length here.
    return _first(
        check_job_spec(request.spec, "spec"),
        check_text(request.array, "array", MAX_ARRAY_TEXT),
    )


def check_submit_jobs(request: jobs_pb2.SubmitJobsRequest) -> Refusal | None:
    """The batch's size, then each job's spec. A job's refusal reads as the daemon names
    jobs of a batch, "job 3 of 10: spec.command: ..." (its field: jobs[3].spec.command).
    An empty batch is allowed: it submits nothing."""
    problem = _check_count(request.jobs, "jobs", MAX_BATCH, "jobs in one batch")
    if problem:
        return problem
    for i, job in enumerate(request.jobs):
        problem = check_job_spec(job.spec, "spec")
        if problem:
            n = len(request.jobs)
            return Refusal(f"jobs[{i}].{problem.field}", f"job {i} of {n}: {problem.message}")
    return None


def check_get_job(request: jobs_pb2.GetJobRequest) -> Refusal | None:
    return check_id(request.id, "id")


def check_cancel_job(request: jobs_pb2.CancelJobRequest) -> Refusal | None:
    return _first(check_id(request.id, "id"), check_text(request.user, "user", MAX_USER))


def check_job_states(states: Collection[int], field: str) -> Refusal | None:
    """Known job states (not UNSPECIFIED): an unknown number would not convert."""
    problem = _check_count(states, field, MAX_STATES, "states")
    if problem:
        return problem
    for i, s in enumerate(states):
        if not 1 <= s <= _JOB_STATES:
            return _no(f"{field}[{i}]", f"{s} is not a job state")
    return None


_JOB_STATES = 6  # JobState: PENDING (1) .. PREEMPTED (6); UNSPECIFIED (0) is no filter


def check_list_jobs(request: jobs_pb2.ListJobsRequest) -> Refusal | None:
    token = request.page_token
    bad_token = token and not (
        token.isascii()
        and token.isdigit()
        and len(token) <= MAX_PAGE_TOKEN
        and int(token) <= MAX_ID
    )
    return _first(
        check_consumer_path(request.consumer, "consumer", filter_=True),
        check_job_states(request.states, "states"),
        check_text(request.user, "user", MAX_USER),
        _no("page_token", "not a page token from this daemon") if bad_token else None,
        check_id(request.array_id, "array_id") if request.array_id else None,
    )


def check_watch_jobs(request: jobs_pb2.WatchJobsRequest) -> Refusal | None:
    problem = _first(
        check_consumer_path(request.consumer, "consumer", filter_=True),
        _check_count(request.ids, "ids", MAX_WATCH_IDS, "ids"),
    )
    if problem:
        return problem
    for i, job_id in enumerate(request.ids):
        problem = check_id(job_id, f"ids[{i}]")
        if problem:
            return problem
    return None


def check_stream_logs(request: jobs_pb2.StreamLogsRequest) -> Refusal | None:
    return _first(
        check_id(request.id, "id"),
        _no("offset", f"{_n(request.offset)} is beyond any log")
        if request.offset > MAX_ID
        else None,
    )


# -- admin -------------------------------------------------------------------------------


def check_apply_policy(request: admin_pb2.ApplyPolicyRequest) -> Refusal | None:
    size = _utf8_len(request.text)
    if size > MAX_POLICY_BYTES:
        return _no("text", f"{_n(size)} bytes of policy, at most {_n(MAX_POLICY_BYTES)}")
    return check_text(request.source_name, "source_name", MAX_SOURCE_NAME)


def check_drain_node(request: admin_pb2.DrainNodeRequest) -> Refusal | None:
    return _first(
        check_node_name(request.node, "node"),
        check_text(request.reason, "reason", MAX_DRAIN_REASON),
    )


def check_undrain_node(request: admin_pb2.UndrainNodeRequest) -> Refusal | None:
    return check_node_name(request.node, "node")


def check_forget_node(request: admin_pb2.ForgetNodeRequest) -> Refusal | None:
    return check_node_name(request.node, "node")


def check_create_token(
    request: admin_pb2.CreateTokenRequest, scopes: Collection[str]
) -> Refusal | None:
    """`scopes`: the names a token may carry (auth's Scope values)."""
    name = check_node_name if request.node else check_user_name
    problem = _first(
        name(request.user, "user"),
        _check_number(request.ttl_seconds, "ttl_seconds", MAX_TOKEN_TTL_S, least=MIN_TOKEN_TTL_S),
        _check_count(request.scopes, "scopes", MAX_SCOPES, "scopes"),
    )
    if problem:
        return problem
    seen: set[str] = set()
    for i, s in enumerate(request.scopes):
        if s not in scopes:
            known = ", ".join(sorted(scopes))
            return _no(f"scopes[{i}]", f"{_show(s)} is not a scope (known: {known})")
        if s in seen:
            return _no(f"scopes[{i}]", f"{_show(s)} is given twice")
        seen.add(s)
    return None


def check_list_tokens(request: admin_pb2.ListTokensRequest) -> Refusal | None:
    return check_text(request.user, "user", MAX_USER)


def check_revoke_token(request: admin_pb2.RevokeTokenRequest) -> Refusal | None:
    return check_text(request.id, "id", MAX_TOKEN_ID, required=True)


def check_list_audit(request: admin_pb2.ListAuditRequest) -> Refusal | None:
    return _first(
        check_text(request.identity, "identity", MAX_IDENTITY),
        _no("before_id", "not an id") if request.before_id > MAX_ID else None,
    )


# -- agents ------------------------------------------------------------------------------


def check_register(msg: agent_pb2.Register, field: str = "register") -> Refusal | None:
    problem = _first(
        check_node_name(msg.node, _join(field, "node")),
        check_node_name(msg.pool, _join(field, "pool")) if msg.pool else None,
        _check_count(msg.gpus, _join(field, "gpus"), MAX_NODE_GPUS, "GPUs"),
        check_text(msg.agent_version, _join(field, "agent_version"), MAX_AGENT_TEXT),
        check_text(msg.hostname, _join(field, "hostname"), MAX_AGENT_TEXT),
        check_text(msg.address, _join(field, "address"), MAX_AGENT_TEXT),
        _check_count(msg.jobs, _join(field, "jobs"), MAX_REPORTS, "job reports"),
    )
    if problem:
        return problem
    seen: set[int] = set()
    for i, gpu in enumerate(msg.gpus):
        where = f"{_join(field, 'gpus')}[{i}]"
        if gpu.index > MAX_GPU_INDEX:
            return _no(f"{where}.index", f"{_n(gpu.index)} is above {_n(MAX_GPU_INDEX)}")
        if gpu.index in seen:
            return _no(f"{where}.index", f"GPU {gpu.index} is listed twice")
        seen.add(gpu.index)
        problem = _first(
            check_text(gpu.uuid, f"{where}.uuid", MAX_GPU_TEXT),
            check_text(gpu.model, f"{where}.model", MAX_GPU_TEXT),
            _no(f"{where}.memory_bytes", f"{_n(gpu.memory_bytes)} bytes is not a GPU's memory")
            if gpu.memory_bytes > MAX_GPU_MEMORY
            else None,
        )
        if problem:
            return problem
    for i, report in enumerate(msg.jobs):
        problem = check_job_report(report, f"{_join(field, 'jobs')}[{i}]")
        if problem:
            return problem
    return None


_JOB_PHASES = 5  # JobPhase: PHASE_RUNNING (1) .. PHASE_REFUSED (5)


def check_job_report(report: agent_pb2.JobReport, field: str = "report") -> Refusal | None:
    problem = _first(
        check_id(report.job_id, _join(field, "job_id")),
        None
        if 1 <= report.phase <= _JOB_PHASES
        else _no(_join(field, "phase"), f"{report.phase} is not a job phase"),
        check_text(report.message, _join(field, "message"), MAX_REPORT_MESSAGE, nul=True),
        _check_number(report.time, _join(field, "time"), 2**40, least=0.0),
        _check_count(report.gpu_indices, _join(field, "gpu_indices"), MAX_NODE_GPUS, "GPUs"),
    )
    if problem:
        return problem
    for i, index in enumerate(report.gpu_indices):
        if index > MAX_GPU_INDEX:
            where = f"{_join(field, 'gpu_indices')}[{i}]"
            return _no(where, f"{_n(index)} is above {_n(MAX_GPU_INDEX)}")
    return None


def check_agent_message(msg: agent_pb2.AgentMessage) -> Refusal | None:
    """One message of an agent's stream (Register first, then the rest)."""
    kind = msg.WhichOneof("msg")
    if kind == "register":
        return check_register(msg.register, "register")
    if kind == "report":
        return check_job_report(msg.report, "report")
    if kind == "log_data":
        size = len(msg.log_data.data)
        if size > MAX_LOG_CHUNK_BYTES:
            return _no("log_data.data", f"{_n(size)} bytes, at most {_n(MAX_LOG_CHUNK_BYTES)}")
        return None
    if kind is None:
        return _no("msg", "an empty message")
    return None


# -- experiments -------------------------------------------------------------------------


def check_experiment_spec(
    spec: experiments_pb2.ExperimentSpec, field: str = "spec"
) -> Refusal | None:
    """Sizes and numbers; the rules that span fields (low < high, grid needs steps,
    placeholders...) are hpo.spec.problems()."""
    f = _join
    problem = _first(
        check_text(spec.name, f(field, "name"), MAX_JOB_NAME),
        check_consumer_path(spec.consumer, f(field, "consumer")),
        check_text(spec.user, f(field, "user"), MAX_USER),
        check_argv(spec.command, f(field, "command")),
        check_env(spec.env, f(field, "env")),
        check_working_dir(spec.working_dir, f(field, "working_dir")),
        _check_count(spec.params, f(field, "params"), MAX_PARAMS, "parameters"),
        check_text(spec.metric, f(field, "metric"), MAX_METRIC),
        _check_enum(spec.direction, f(field, "direction"), 2),
        _check_enum(spec.sampler, f(field, "sampler"), 3),
        _check_number(spec.seed, f(field, "seed"), MAX_SEED, least=0)
        if spec.HasField("seed")
        else None,
        _check_pruner(spec.pruner, f(field, "pruner")),
        _check_number(spec.max_trials, f(field, "max_trials"), MAX_TRIALS, least=0),
        _check_number(spec.max_parallel, f(field, "max_parallel"), MAX_PARALLEL, least=0),
        check_gpus(spec.gpus.min, spec.gpus.max, f(field, "gpus")),
        check_priority(spec.priority, f(field, "priority")),
    )
    if problem:
        return problem
    for i, p in enumerate(spec.params):
        problem = _check_param(p, f"{f(field, 'params')}[{i}]")
        if problem:
            return problem
    return None


def _check_enum(value: int, field: str, most: int) -> Refusal | None:
    if not 0 <= value <= most:
        return _no(field, f"{value} is not one of the known values")
    return None


def _check_pruner(p: experiments_pb2.PrunerSpec, field: str) -> Refusal | None:
    numbers = ("min_resource", "max_resource", "reduction_factor", "startup_trials")
    return _first(
        _check_enum(p.kind, _join(field, "kind"), 4),
        *(
            _check_number(getattr(p, n), _join(field, n), MAX_PRUNER_NUMBER, least=0)
            for n in (*numbers, "warmup_steps")
        ),
    )


def _check_param(p: experiments_pb2.Param, field: str) -> Refusal | None:
    problem = check_text(p.name, _join(field, "name"), MAX_PARAM_NAME, required=True)
    if problem:
        return problem
    kind = p.WhichOneof("kind")
    big = MAX_EXPERIMENT_NUMBER
    if kind == "float_range":
        r = p.float_range
        return _first(
            _check_number(r.low, _join(field, "float_range.low"), big),
            _check_number(r.high, _join(field, "float_range.high"), big),
            _check_number(r.step, _join(field, "float_range.step"), big)
            if r.HasField("step")
            else None,
        )
    if kind == "int_range":
        r2 = p.int_range
        return _first(
            _check_number(r2.low, _join(field, "int_range.low"), big),
            _check_number(r2.high, _join(field, "int_range.high"), big),
            _check_number(r2.step, _join(field, "int_range.step"), big)
            if r2.HasField("step")
            else None,
        )
    if kind == "categorical":
        choices = p.categorical.choices
        where = _join(field, "categorical.choices")
        problem = _check_count(choices, where, MAX_CHOICES, "choices")
        if problem:
            return problem
        for i, c in enumerate(choices):
            problem = _check_choice(c, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return _no(field, "a parameter needs a float_range, an int_range or a categorical")


def _check_choice(c: experiments_pb2.ParamValue, field: str) -> Refusal | None:
    kind = c.WhichOneof("kind")
    if kind == "float_value":
        return _check_number(c.float_value, field, MAX_EXPERIMENT_NUMBER)
    if kind == "int_value":
        return _check_number(c.int_value, field, MAX_EXPERIMENT_NUMBER)
    if kind == "string_value":
        return check_text(c.string_value, field, MAX_CHOICE_TEXT)
    if kind == "bool_value":
        return None
    return _no(field, "a choice needs a value")


def check_create_experiment(request: experiments_pb2.CreateExperimentRequest) -> Refusal | None:
    return check_experiment_spec(request.spec, "spec")


def check_get_experiment(request: experiments_pb2.GetExperimentRequest) -> Refusal | None:
    return check_id(request.id, "id")


def check_list_experiments(request: experiments_pb2.ListExperimentsRequest) -> Refusal | None:
    return check_consumer_path(request.consumer, "consumer", filter_=True)


def check_stop_experiment(request: experiments_pb2.StopExperimentRequest) -> Refusal | None:
    return _first(check_id(request.id, "id"), check_text(request.user, "user", MAX_USER))


def check_watch_experiment(request: experiments_pb2.WatchExperimentRequest) -> Refusal | None:
    return check_id(request.id, "id")


def check_report_trial(request: experiments_pb2.ReportTrialRequest) -> Refusal | None:
    return _first(
        check_id(request.experiment_id, "experiment_id"),
        check_id(request.job_id, "job_id"),
        _no("step", f"{_n(request.step)} is not a step") if request.step > MAX_ID else None,
        _no("value", f"must be a finite number, got {request.value}")
        if not math.isfinite(request.value)
        else None,
    )


# -- inference services (docs/serve.md) --------------------------------------------------

MAX_SERVICE_NAME = 256  # the rule (63, [a-z0-9-]) is serve.spec.problems()'s
MAX_SERVICE_NUMBER = 1e9  # any count or duration of a service spec, before its own rules
MAX_MASK_PATHS = 32
MAX_REPORTED_SERVICES = 10_000  # services in one load report
MAX_REPORTED_REPLICAS = 10_000  # replicas of one service in one load report
MAX_BEARER = 16 * KIB  # a token the router passes on
MAX_ROUTER_NAME = 256


def check_service_spec(spec: serving_pb2.ServiceSpec, field: str = "spec") -> Refusal | None:
    f = _join
    numbers = (
        "target_in_flight",
        "scale_down_delay_s",
        "window_s",
        "queue_timeout_s",
        "request_timeout_s",
    )
    return _first(
        check_text(spec.name, f(field, "name"), MAX_SERVICE_NAME),
        check_consumer_path(spec.consumer, f(field, "consumer")) if spec.consumer else None,
        check_text(spec.user, f(field, "user"), MAX_USER),
        check_argv(spec.command, f(field, "command")) if spec.command else None,
        check_env(spec.env, f(field, "env")),
        check_working_dir(spec.working_dir, f(field, "working_dir")),
        check_text(spec.readiness_path, f(field, "readiness_path"), MAX_PATH),
        check_priority(spec.priority, f(field, "priority")),
        *(_check_number(getattr(spec, n), f(field, n), MAX_SERVICE_NUMBER) for n in numbers),
    )


def check_create_service(request: serving_pb2.CreateServiceRequest) -> Refusal | None:
    return check_service_spec(request.spec)


def _check_service_name(request: Any) -> Refusal | None:
    return check_text(request.name, "name", MAX_SERVICE_NAME, required=True)


def check_list_services(request: serving_pb2.ListServicesRequest) -> Refusal | None:
    return check_consumer_path(request.consumer, "consumer", filter_=True)


def check_update_service(request: serving_pb2.UpdateServiceRequest) -> Refusal | None:
    paths = request.update_mask.paths
    return _first(
        _check_service_name(request),
        check_service_spec(request.spec),
        _check_count(paths, "update_mask.paths", MAX_MASK_PATHS, "paths"),
        *(check_text(p, "update_mask.paths", 64) for p in paths),
    )


def check_load_report(request: serving_pb2.LoadReport) -> Refusal | None:
    problem = _first(
        check_text(request.router, "router", MAX_ROUTER_NAME),
        _check_count(request.services, "services", MAX_REPORTED_SERVICES, "services"),
    )
    if problem:
        return problem
    for i, s in enumerate(request.services):
        where = f"services[{i}]"
        problem = _first(
            _check_count(s.replicas, f"{where}.replicas", MAX_REPORTED_REPLICAS, "replicas"),
            _check_number(s.p50_ms, f"{where}.p50_ms", MAX_SERVICE_NUMBER, least=0),
            _check_number(s.p99_ms, f"{where}.p99_ms", MAX_SERVICE_NUMBER, least=0),
        )
        if problem:
            return problem
    return None


def check_check_access(request: serving_pb2.CheckAccessRequest) -> Refusal | None:
    return _first(
        check_text(request.service, "service", MAX_SERVICE_NAME, required=True),
        check_text(request.token, "token", MAX_BEARER),
    )


def check_watch_routes(request: serving_pb2.WatchRoutesRequest) -> Refusal | None:
    return check_text(request.router, "router", MAX_ROUTER_NAME)


# -- every request -----------------------------------------------------------------------

_CHECKS: dict[str, Callable[[Any], Refusal | None]] = {
    "schedulerd.api.v1.SubmitJobRequest": check_submit_job,
    "schedulerd.api.v1.SubmitJobsRequest": check_submit_jobs,
    "schedulerd.api.v1.GetJobRequest": check_get_job,
    "schedulerd.api.v1.ListJobsRequest": check_list_jobs,
    "schedulerd.api.v1.CancelJobRequest": check_cancel_job,
    "schedulerd.api.v1.WatchJobsRequest": check_watch_jobs,
    "schedulerd.api.v1.StreamLogsRequest": check_stream_logs,
    "schedulerd.api.v1.ApplyPolicyRequest": check_apply_policy,
    "schedulerd.api.v1.DrainNodeRequest": check_drain_node,
    "schedulerd.api.v1.UndrainNodeRequest": check_undrain_node,
    "schedulerd.api.v1.ForgetNodeRequest": check_forget_node,
    "schedulerd.api.v1.ListTokensRequest": check_list_tokens,
    "schedulerd.api.v1.RevokeTokenRequest": check_revoke_token,
    "schedulerd.api.v1.ListAuditRequest": check_list_audit,
    "schedulerd.api.v1.AgentMessage": check_agent_message,
    "schedulerd.api.v1.CreateExperimentRequest": check_create_experiment,
    "schedulerd.api.v1.GetExperimentRequest": check_get_experiment,
    "schedulerd.api.v1.ListExperimentsRequest": check_list_experiments,
    "schedulerd.api.v1.StopExperimentRequest": check_stop_experiment,
    "schedulerd.api.v1.WatchExperimentRequest": check_watch_experiment,
    "schedulerd.api.v1.ReportTrialRequest": check_report_trial,
    "schedulerd.api.v1.CreateServiceRequest": check_create_service,
    "schedulerd.api.v1.GetServiceRequest": _check_service_name,
    "schedulerd.api.v1.ListServicesRequest": check_list_services,
    "schedulerd.api.v1.UpdateServiceRequest": check_update_service,
    "schedulerd.api.v1.DeleteServiceRequest": _check_service_name,
    "schedulerd.api.v1.WatchServiceRequest": _check_service_name,
    "schedulerd.api.v1.LoadReport": check_load_report,
    "schedulerd.api.v1.CheckAccessRequest": check_check_access,
    "schedulerd.api.v1.WatchRoutesRequest": check_watch_routes,
}
CREATE_TOKEN = "schedulerd.api.v1.CreateTokenRequest"


def check_request(request: Any, scopes: Collection[str] = ()) -> Refusal | None:
    """The check for any request (or agent message) by its type; None for types that
    carry nothing to bound (GetPolicyRequest, ListNodesRequest, WhoAmIRequest...).
    `scopes`: the scope names a CreateTokenRequest may use."""
    name = request.DESCRIPTOR.full_name
    if name == CREATE_TOKEN:
        return check_create_token(request, scopes)
    check = _CHECKS.get(name)
    return None if check is None else check(request)
