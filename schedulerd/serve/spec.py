"""What a service is (docs/serve.md): the spec a user gives, with its defaults filled
in, and every problem of it as (field, reason), for the API (INVALID_ARGUMENT) and
the service file (FILE:LINE: KEY) alike. Pure: no I/O."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace

from schedulerd import bounds

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SERVICE_NAME_RULE = "lowercase letters, digits and '-', starting with a letter or digit, at most 63"
MAX_REPLICAS = 1000  # replicas of one service
MAX_QUEUE = 10_000  # requests the router holds for one service
MAX_SECONDS = 86400.0  # any duration of a service: at most a day
MIN_SECONDS = 0.1  # and at least this: a 1e-300 s timeout would fail every request
MAX_TARGET = 100_000.0  # in-flight requests per replica
MAX_READINESS_PATH = 1024
READINESS_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")

# Defaults for the zeros of the wire (proto3 has no "unset" for scalars).
DEFAULT_TARGET = 4.0
DEFAULT_SCALE_DOWN_DELAY_S = 60.0
DEFAULT_WINDOW_S = 10.0
DEFAULT_MAX_QUEUE = 100
DEFAULT_QUEUE_TIMEOUT_S = 30.0
DEFAULT_REQUEST_TIMEOUT_S = 300.0

# Fields whose change needs new replicas (the command they run): an update of any of
# them rolls the replicas over one by one (docs/serve.md, rolling updates).
ROLLING_FIELDS = frozenset(
    {"command", "env", "working_dir", "gpus_per_replica", "readiness_path", "priority"}
)
# Fields that never change after Create.
FIXED_FIELDS = frozenset({"name", "consumer", "user"})


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    consumer: str
    user: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    gpus_per_replica: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    target_in_flight: float = DEFAULT_TARGET
    readiness_path: str = "/"
    scale_down_delay_s: float = DEFAULT_SCALE_DOWN_DELAY_S
    scale_to_zero: bool = False
    priority: int = 0
    public: bool = False
    window_s: float = DEFAULT_WINDOW_S
    max_queue: int = DEFAULT_MAX_QUEUE
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    def with_defaults(self) -> ServiceSpec:
        """Zeros (the wire's "not given") replaced by the defaults."""
        floor = self.min_replicas or (0 if self.scale_to_zero else 1)
        return replace(
            self,
            min_replicas=floor,
            gpus_per_replica=self.gpus_per_replica or 1,
            max_replicas=self.max_replicas or max(floor, 1),
            target_in_flight=self.target_in_flight or DEFAULT_TARGET,
            readiness_path=self.readiness_path or "/",
            scale_down_delay_s=self.scale_down_delay_s or DEFAULT_SCALE_DOWN_DELAY_S,
            window_s=self.window_s or DEFAULT_WINDOW_S,
            max_queue=self.max_queue or DEFAULT_MAX_QUEUE,
            queue_timeout_s=self.queue_timeout_s or DEFAULT_QUEUE_TIMEOUT_S,
            request_timeout_s=self.request_timeout_s or DEFAULT_REQUEST_TIMEOUT_S,
        )

    @property
    def floor(self) -> int:
        """Replicas kept while the service has traffic."""
        return self.min_replicas


SPEC_FIELDS = tuple(f.name for f in fields(ServiceSpec))


def problems(spec: ServiceSpec) -> list[tuple[str, str]]:
    """Every problem of a spec (with defaults filled in) as (field, reason)."""
    out: list[tuple[str, str]] = []
    if not SERVICE_NAME.fullmatch(spec.name):
        out.append(("name", f"{spec.name[:80]!r}: use {SERVICE_NAME_RULE}"))
    if not spec.consumer.startswith("/"):
        out.append(("consumer", "a leaf consumer path like /team/project is required"))
    if not spec.command or not spec.command[0]:
        out.append(("command", "a command (argv) that serves HTTP on $SCHEDULERD_PORT is required"))
    out += _replica_problems(spec)
    out += _number_problems(spec)
    if len(spec.readiness_path) > MAX_READINESS_PATH or not READINESS_PATH.fullmatch(
        spec.readiness_path
    ):
        out.append(
            ("readiness_path", f"{spec.readiness_path[:80]!r}: a URL path starting with '/'")
        )
    out += _bound_problems(spec)
    return out


def _replica_problems(spec: ServiceSpec) -> list[tuple[str, str]]:
    out = []
    if spec.gpus_per_replica < 1 or spec.gpus_per_replica > bounds.MAX_NODE_GPUS:
        out.append(
            ("gpus_per_replica", f"from 1 to {bounds.MAX_NODE_GPUS}, got {spec.gpus_per_replica}")
        )
    if spec.max_replicas > MAX_REPLICAS:
        out.append(("max_replicas", f"at most {MAX_REPLICAS:,}, got {spec.max_replicas:,}"))
    if spec.min_replicas > spec.max_replicas:
        out.append(
            ("min_replicas", f"{spec.min_replicas} is above max_replicas ({spec.max_replicas})")
        )
    if spec.max_replicas < 1:
        out.append(("max_replicas", "at least 1"))
    if spec.min_replicas == 0 and not spec.scale_to_zero:
        out.append(("min_replicas", "0 needs scale_to_zero: true"))
    return out


def _number_problems(spec: ServiceSpec) -> list[tuple[str, str]]:
    out = []
    for name in (
        "scale_down_delay_s",
        "window_s",
        "queue_timeout_s",
        "request_timeout_s",
    ):
        v = getattr(spec, name)
        if not math.isfinite(v) or not MIN_SECONDS <= v <= MAX_SECONDS:
            out.append((name, f"seconds, from {MIN_SECONDS:g} to {MAX_SECONDS:g}, got {v}"))
    t = spec.target_in_flight
    if not math.isfinite(t) or not 0 < t <= MAX_TARGET:
        out.append(("target_in_flight", f"above 0 and at most {MAX_TARGET:g}, got {t}"))
    if not 1 <= spec.max_queue <= MAX_QUEUE:
        out.append(("max_queue", f"from 1 to {MAX_QUEUE:,}, got {spec.max_queue:,}"))
    return out


def _bound_problems(spec: ServiceSpec) -> list[tuple[str, str]]:
    b = bounds
    checks = [
        b.check_consumer_path(spec.consumer, "consumer") if spec.consumer.startswith("/") else None,
        b.check_text(spec.user, "user", b.MAX_USER),
        b.check_argv(list(spec.command), "command") if spec.command and spec.command[0] else None,
        b.check_env(spec.env, "env"),
        b.check_text(spec.working_dir, "working_dir", b.MAX_PATH),
        b.check_priority(spec.priority, "priority"),
    ]
    out = [(r.field, r.message.removeprefix(f"{r.field}: ")) for r in checks if r is not None]
    reserved = sorted(k for k in spec.env if k.startswith("SCHEDULERD_"))
    if reserved:
        out.append(("env", f"{', '.join(reserved)}: SCHEDULERD_ names are set by schedulerd"))
    return out


def needs_rollout(old: ServiceSpec, new: ServiceSpec) -> bool:
    """Whether replicas of `old` must be replaced to run `new`."""
    return any(getattr(old, f) != getattr(new, f) for f in ROLLING_FIELDS)
