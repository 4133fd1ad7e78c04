"""An experiment as the daemon keeps it: the search space, the objective, the
sampler and pruner, the trial command and the limits. Plain data and checks,
no Optuna (the daemon maps these onto Optuna in daemon/experiments/study.py).

`problems(spec)` lists everything wrong at once, each as (field, reason) with
the field spelled as in the experiment file (`params.lr.high`), so the API and
`schedctl hpo create` name the same place.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from schedulerd import bounds

Choice = str | int | float | bool

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "asha", "hyperband")
DIRECTIONS = ("minimize", "maximize")
BUILTINS = ("trial", "experiment")  # placeholders every command may use
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `{{` and `}}` are literal braces; `{name}` is a placeholder.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    step: int | None = None


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Choice, ...]


Param = FloatParam | IntParam | CategoricalParam


@dataclass(frozen=True)
class PrunerSpec:
    kind: str = "none"
    min_resource: int = 1  # asha, hyperband
    max_resource: int = 0  # hyperband; 0: "auto" (the most steps seen)
    reduction_factor: int = 3  # asha, hyperband
    startup_trials: int = 5  # median
    warmup_steps: int = 0  # median


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    consumer: str
    user: str
    command: tuple[str, ...]
    params: tuple[Param, ...]
    metric: str = "objective"
    direction: str = "minimize"
    sampler: str = "tpe"
    seed: int | None = None
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    max_trials: int = 0
    max_parallel: int = 1
    gpus_min: int = 1
    gpus_max: int = 1
    priority: int = 0
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""

    def goal(self) -> int:
        """Trials in all: max_trials, or the whole grid when it is 0 (grid only)."""
        if self.max_trials == 0 and self.sampler == "grid":
            return grid_size(self.params) or 0
        return self.max_trials


def grid_size(params: tuple[Param, ...]) -> int | None:
    """Points of the grid, or None when a parameter has no finite list of values."""
    size = 1
    for p in params:
        count = grid_count(p)
        if count == 0:
            return None
        size *= count
    return size


# A grid is built whole, by us and by Optuna's GridSampler: a range of 10^9 would
# exhaust the daemon's memory.
MAX_GRID = 100_000


def grid_count(p: Param) -> int:
    """How many values a parameter has on a grid, counted, not listed (0: none)."""
    if isinstance(p, CategoricalParam):
        return len(p.choices)
    if p.log:
        return 0
    if isinstance(p, IntParam):
        return max(0, (p.high - p.low) // (p.step or 1) + 1)
    if p.step is None or not (math.isfinite(p.step) and p.step > 0):
        return 0
    steps = (p.high - p.low) / p.step
    if not math.isfinite(steps) or steps > _HUGE_GRID:  # a tiny step or a huge range
        return _HUGE_GRID
    return math.floor(steps + 1e-9) + 1


# What grid_count answers for a float range it cannot count exactly: far above MAX_GRID.
_HUGE_GRID = 2**53


def grid_values(p: Param) -> list[Choice] | None:
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if p.log:
        return None
    if isinstance(p, IntParam):
        return list(range(p.low, p.high + 1, p.step or 1))
    if p.step is None or p.step <= 0:
        return None
    count = math.floor((p.high - p.low) / p.step + 1e-9) + 1
    return [p.low + i * p.step for i in range(count)]


def fill_command(command: tuple[str, ...], values: dict[str, Any]) -> list[str]:
    """The trial's argv: each {name} replaced by its value; {{ and }} are braces."""

    def one(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        return str(values[match.group(1)])

    return [PLACEHOLDER.sub(one, arg) for arg in command]


def problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Every problem of the spec as (field, reason); empty when it is valid."""
    out: list[tuple[str, str]] = []
    if not spec.consumer.startswith("/"):
        out.append(("consumer", "a leaf consumer path like /team/project is required"))
    if not spec.metric:
        out.append(("objective.metric", "name the metric the trials report"))
    if spec.direction not in DIRECTIONS:
        out.append(("objective.direction", f"{spec.direction!r}: use minimize or maximize"))
    if spec.sampler not in SAMPLERS:
        out.append(("sampler", f"{spec.sampler!r}: use one of {', '.join(SAMPLERS)}"))
    out += _param_problems(spec.params, spec.sampler)
    size = grid_size(spec.params) if spec.sampler == "grid" and not out else None
    if size is not None and size > MAX_GRID:
        out.append(("params", f"the grid would have {size:,} points (at most {MAX_GRID:,})"))
    out += _command_problems(spec)
    out += _pruner_problems(spec.pruner)
    out += _limit_problems(spec)
    out += _bound_problems(spec)
    return out


def _param_problems(params: tuple[Param, ...], sampler: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not params:
        out.append(("params", "the search space is empty; give at least one parameter"))
    seen: set[str] = set()
    for p in params:
        key = f"params.{p.name}"
        if not PARAM_NAME.fullmatch(p.name) or p.name in BUILTINS:
            why = "letters, digits and '_', not starting with a digit"
            not_ = " or ".join(BUILTINS)
            out.append((key, f"parameter name {p.name!r} is not allowed: use {why}, not {not_}"))
        if p.name in seen:
            out.append((key, "defined twice"))
        seen.add(p.name)
        if isinstance(p, CategoricalParam):
            if not p.choices:
                out.append((f"{key}.choices", "give at least one choice"))
            elif len(set(map(repr, p.choices))) != len(p.choices):
                out.append((f"{key}.choices", "choices repeat"))
            elif len(set(p.choices)) != len(p.choices):
                # Optuna tells choices apart by ==, and 1 == 1.0 == True.
                out.append((f"{key}.choices", "choices repeat (1, 1.0 and true are equal)"))
            continue
        if isinstance(p, FloatParam) and not (math.isfinite(p.low) and math.isfinite(p.high)):
            out.append((key, "low and high must be finite numbers"))
            continue
        if p.low >= p.high:
            out.append((f"{key}.high", f"must be above low ({p.low}), got {p.high}"))
        if p.log and p.low <= 0:
            out.append((f"{key}.low", f"a log scale needs low > 0, got {p.low}"))
        if p.log and p.step is not None:
            out.append((f"{key}.step", "a step cannot be used with a log scale"))
        if p.step is not None and not (math.isfinite(p.step) and p.step > 0):
            out.append((f"{key}.step", f"must be a number above 0, got {p.step}"))
        elif p.step is not None and p.high > p.low and p.step > p.high - p.low:
            out.append((f"{key}.step", f"{p.step} is wider than the range {p.low}..{p.high}"))
        if sampler == "grid" and grid_count(p) > MAX_GRID:
            out.append((key, f"{grid_count(p):,} values on a grid (at most {MAX_GRID:,})"))
        elif sampler == "grid" and grid_count(p) == 0:
            why = "a log scale" if p.log else "no step"
            out.append((key, f"the grid sampler needs a finite list of values; this has {why}"))
    return out


def _command_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    if not spec.command or not spec.command[0]:
        return [("command", "a command (argv) is required")]
    known = {p.name for p in spec.params} | set(BUILTINS)
    out = []
    for i, arg in enumerate(spec.command):
        for m in PLACEHOLDER.finditer(arg):
            name = m.group(1)
            if name is not None and name not in known:
                listed = ", ".join(sorted(known))
                why = f"unknown placeholder {{{name}}} (known: {listed}; {{{{ }}}} are braces)"
                out.append((f"command[{i}]", why))
    return out


def _pruner_problems(p: PrunerSpec) -> list[tuple[str, str]]:
    if p.kind not in PRUNERS:
        return [("pruner", f"{p.kind!r}: use one of {', '.join(PRUNERS)}")]
    out = []
    if p.kind in ("asha", "hyperband"):
        if p.min_resource < 1:
            out.append(("pruner.min_resource", f"must be at least 1, got {p.min_resource}"))
        if p.reduction_factor < 2:
            out.append(("pruner.reduction_factor", f"must be at least 2, got {p.reduction_factor}"))
    if p.kind == "hyperband" and p.max_resource and p.max_resource <= p.min_resource:
        out.append(("pruner.max_resource", f"must be above min_resource ({p.min_resource})"))
    if p.kind == "median" and (p.startup_trials < 0 or p.warmup_steps < 0):
        out.append(("pruner", "startup_trials and warmup_steps cannot be negative"))
    return out


def _limit_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    out = []
    if spec.max_parallel < 1:
        out.append(("max_parallel", f"must be at least 1, got {spec.max_parallel}"))
    size = grid_size(spec.params) if spec.sampler == "grid" and spec.params else None
    if spec.max_trials < 0 or (spec.max_trials == 0 and spec.sampler != "grid"):
        out.append(("max_trials", f"must be at least 1, got {spec.max_trials}"))
    elif size is not None and spec.max_trials > size:
        out.append(("max_trials", f"{spec.max_trials} is more than the grid's {size} points"))
    if spec.gpus_min < 1:
        out.append(("gpus", f"a trial needs at least 1 GPU, got {spec.gpus_min}"))
    elif spec.gpus_max < spec.gpus_min:
        out.append(("gpus", f"{spec.gpus_min}:{spec.gpus_max} is empty (max below min)"))
    return out


def _bound_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Sizes and magnitudes (schedulerd.bounds): what the API would refuse, and what would
    cost the daemon or Optuna without bound (a 10^300 range, 10^9 trials)."""
    b = bounds
    checks = [
        b.check_text(spec.name, "name", b.MAX_JOB_NAME),
        b.check_consumer_path(spec.consumer, "consumer") if spec.consumer.startswith("/") else None,
        b.check_text(spec.user, "user", b.MAX_USER),
        b.check_argv(spec.command, "command") if spec.command and spec.command[0] else None,
        b.check_env(spec.env, "env"),
        b.check_text(spec.working_dir, "workdir", b.MAX_PATH),
        b.check_text(spec.metric, "objective.metric", b.MAX_METRIC),
        b.check_priority(spec.priority, "priority"),
    ]
    out = [(r.field, _why(r)) for r in checks if r is not None]
    if spec.gpus_min > b.MAX_GPUS or spec.gpus_max > b.MAX_GPUS:
        out.append(("gpus", f"at most {b.MAX_GPUS:,} GPUs per trial"))
    if spec.seed is not None and not 0 <= spec.seed <= b.MAX_SEED:
        out.append(("seed", f"must be from 0 to {b.MAX_SEED:,}, got {spec.seed}"))
    if spec.max_trials > b.MAX_TRIALS:
        out.append(("max_trials", f"{spec.max_trials:,} trials, at most {b.MAX_TRIALS:,}"))
    if spec.max_parallel > b.MAX_PARALLEL:
        out.append(("max_parallel", f"{spec.max_parallel:,}, at most {b.MAX_PARALLEL:,}"))
    pruner = spec.pruner
    for name in ("min_resource", "max_resource", "reduction_factor", "startup_trials"):
        if getattr(pruner, name) > b.MAX_PRUNER_NUMBER:
            out.append((f"pruner.{name}", f"at most {b.MAX_PRUNER_NUMBER:,}"))
    if pruner.warmup_steps > b.MAX_PRUNER_NUMBER:
        out.append(("pruner.warmup_steps", f"at most {b.MAX_PRUNER_NUMBER:,}"))
    if len(spec.params) > b.MAX_PARAMS:
        out.append(("params", f"{len(spec.params)} parameters, at most {b.MAX_PARAMS}"))
    for p in spec.params:
        out += _param_bounds(p)
    return out


def _param_bounds(p: Param) -> list[tuple[str, str]]:
    key = f"params.{p.name}"
    out = []
    if len(p.name) > bounds.MAX_PARAM_NAME:
        out.append((key, f"a name of {len(p.name)} characters, at most {bounds.MAX_PARAM_NAME}"))
    if isinstance(p, CategoricalParam):
        if len(p.choices) > bounds.MAX_CHOICES:
            out.append((f"{key}.choices", f"{len(p.choices):,} choices, at most 1,000"))
        for c in p.choices:
            if isinstance(c, str) and len(c) > bounds.MAX_CHOICE_TEXT:
                out.append((f"{key}.choices", f"a choice of {len(c):,} characters, at most 1,024"))
            elif isinstance(c, int | float) and not _bounded(c):
                out.append((f"{key}.choices", f"{c} is not a finite number within +-1e15"))
        return out
    for name in ("low", "high", "step"):
        x = getattr(p, name)
        if x is not None and not _bounded(x):
            out.append((f"{key}.{name}", f"must be a finite number within +-1e15, got {x}"))
    return out


def _bounded(x: float) -> bool:
    try:
        return math.isfinite(x) and abs(x) <= bounds.MAX_EXPERIMENT_NUMBER
    except OverflowError:  # an int beyond any float
        return False


def _why(r: bounds.Refusal) -> str:
    """A refusal's reason without its field (the caller names the field)."""
    return r.message.removeprefix(f"{r.field}: ")
