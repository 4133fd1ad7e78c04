"""The experiment file (YAML) → an ExperimentSpec, or every problem at once as
`FILE:LINE: KEY: REASON`, the way the policy loader reports (schedulerd/policy/):
the same composed-node reading keeps line numbers and catches repeated keys.

Values are read and type-checked here; the rules that span fields (low < high,
log needs low > 0, grid needs steps, placeholders...) are spec.problems(), whose
field names are mapped back onto the lines they came from. The format is in
docs/hpo.md.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from schedulerd.bounds import MAX_ENV_VALUE, MAX_GPUS
from schedulerd.hpo.spec import (
    CategoricalParam,
    Choice,
    ExperimentSpec,
    FloatParam,
    IntParam,
    Param,
    PrunerSpec,
    problems,
)
from schedulerd.policy.errors import Issues, PolicyError, PolicyIssue, TooManyIssues
from schedulerd.policy.nodes import (
    BOOL,
    FLOAT,
    INT,
    STR,
    Limits,
    compose,
    describe,
    entries,
    join,
    unknown_key,
    value,
)
from schedulerd.policy.reader import FileReader

TOP_KEYS = (
    *("name", "consumer", "user", "command", "env", "workdir", "gpus", "priority"),
    *("objective", "params", "sampler", "seed", "pruner", "max_trials", "max_parallel"),
)
PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}
PRUNER_KEYS = (
    *("type", "min_resource", "max_resource", "reduction_factor"),
    *("startup_trials", "warmup_steps"),
)
# Like a policy (no anchors, aliases or merge keys; 1 MiB, 32 levels), but a value may be
# as long as an environment variable's. Numbers are bounded by spec.problems().
LIMITS = Limits("an experiment file", max_text=MAX_ENV_VALUE)
_CHOICE_TYPES = {INT: int, FLOAT: float, BOOL: bool}
_GPUS = re.compile(r"\s*([0-9]{1,7})\s*(?::\s*([0-9]{1,7})\s*)?")


class ExperimentFileError(PolicyError):
    def __str__(self) -> str:
        sources = sorted({i.source for i in self.issues})
        n = len(self.issues)
        head = f"experiment file {', '.join(sources)} has {n} error{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {i}" for i in self.issues)])

    def __reduce__(self) -> tuple[type[PolicyError], tuple[tuple[PolicyIssue, ...]]]:
        return (ExperimentFileError, (self.issues,))


def load_experiment_file(path: str | Path, user: str | None = None) -> ExperimentSpec:
    source = str(path)
    try:
        with open(path, "rb") as f:  # no more than a file may hold: the rest is refused
            data = f.read(LIMITS.max_bytes + 1)
        text = data.decode("utf-8")
        base = Path(path).resolve().parent
    except (OSError, UnicodeDecodeError, ValueError, RuntimeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise ExperimentFileError([PolicyIssue(source, 0, "", f"cannot read: {why}")]) from None
    return load_experiment(text, source, base, user)


def load_experiment(
    text: str, source: str = "<experiment>", base: Path | None = None, user: str | None = None
) -> ExperimentSpec:
    """Parse and check an experiment file; a relative workdir is taken from `base`."""
    issues = Issues(source)
    reader = _Reader(issues)
    spec = None
    try:
        doc = compose(text, issues, LIMITS)
        if doc is not None and not issues:
            spec = reader.document(doc, base or Path.cwd(), user or "")  # "": the caller
        elif doc is None and not issues:
            issues.add(1, "", "the file is empty; see docs/hpo.md for the format")
        if spec is not None:
            # Every problem at once: those of the values read well, even after another
            # key was unknown or mistyped (that key's own placeholder is not judged).
            bad = issues.keys()
            for key, why in problems(spec):
                if not any(_related(key, b) for b in bad):
                    issues.add(reader.line_of(key), key, why)
    except TooManyIssues:  # reported below, with a note that there are more
        pass
    try:
        issues.raise_if_any()
    except PolicyError as e:
        raise ExperimentFileError(e.issues) from None
    assert spec is not None
    return spec


def _related(key: str, other: str) -> bool:
    """Whether two keys are one, or one holds the other (params.lr, params.lr.low)."""
    if not key or not other:
        return key == other
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def _finite(x: object) -> bool:
    return not isinstance(x, float) or math.isfinite(x)


class _Reader(FileReader):
    def document(self, doc: Node, base: Path, user: str) -> ExperimentSpec | None:
        if not isinstance(doc, MappingNode):
            self.issues.add(doc, "", f"the file must be a mapping, got {describe(doc)}")
            return None
        got: dict[str, Any] = {}
        for name, k, v in entries(doc, "", self.issues):
            self._note(name, v)
            if name not in TOP_KEYS:
                self.issues.add(k, name, unknown_key(name, TOP_KEYS))
            elif name == "command":
                got[name] = self._strings(v, name)
            elif name == "env":
                got[name] = self._env(v)
            elif name == "params":
                got[name] = self._params(v)
            elif name == "objective":
                got.update(self._objective(v))
            elif name == "pruner":
                got[name] = self._pruner(v)
            elif name == "gpus":
                got["gpus"] = self._gpus(v)
            elif name in ("priority", "seed", "max_trials", "max_parallel"):
                got[name] = self._int(v, name)
            else:
                got[name] = self._str(v, name)
        for required in ("consumer", "command", "params"):
            if required not in got:
                self.issues.add(doc, required, "missing; see docs/hpo.md for the format")
        if any(required not in got for required in ("consumer", "command", "params")):
            return None
        workdir = got.get("workdir") or "."
        try:
            working_dir = str((base / workdir).resolve())
        except (OSError, ValueError, RuntimeError) as e:  # a NUL, a symlink loop...
            self.issues.add(self.line_of("workdir"), "workdir", f"not a usable path: {e}")
            return None
        gmin, gmax = got.get("gpus", (1, 1))
        return ExperimentSpec(
            name=got.get("name", ""),
            consumer=got["consumer"],
            user=got.get("user") or user,
            command=tuple(got["command"]),
            params=tuple(got["params"]),
            metric=got.get("metric", "objective"),
            direction=got.get("direction", "minimize"),
            sampler=got.get("sampler", "tpe"),
            seed=got.get("seed"),
            pruner=got.get("pruner", PrunerSpec()),
            max_trials=got.get("max_trials", 0),
            max_parallel=got.get("max_parallel", 1),
            gpus_min=gmin,
            gpus_max=gmax,
            priority=got.get("priority", 0),
            env=got.get("env", {}),
            working_dir=working_dir,
        )

    # -- sections -----------------------------------------------------------

    def _objective(self, node: Node) -> dict[str, str]:
        out = {}
        for name, k, v in self._mapping(node, "objective"):
            key = join("objective", name)
            self._note(key, v)
            if name in ("metric", "direction"):
                out[name] = self._str(v, key)
            else:
                self.issues.add(k, key, unknown_key(name, ("metric", "direction")))
        return out

    def _params(self, node: Node) -> list[Param]:
        out: list[Param] = []
        for name, _, v in self._mapping(node, "params"):
            key = join("params", name)
            self._note(key, v)
            param = self._param(name, v, key)
            if param is not None:
                out.append(param)
        return out

    def _param(self, name: str, node: Node, key: str) -> Param | None:
        fields = {n: (k, v) for n, k, v in self._mapping(node, key)}
        if "type" not in fields:
            self.issues.add(node, key, "missing 'type': float, int or categorical")
            return None
        kind = self._str(fields["type"][1], join(key, "type"))
        if kind not in PARAM_KEYS:
            self.issues.add(
                fields["type"][1], join(key, "type"), f"{kind!r}: use float, int or categorical"
            )
            return None
        for n, (k, v) in fields.items():
            self._note(join(key, n), v)
            if n not in PARAM_KEYS[kind]:
                self.issues.add(k, join(key, n), unknown_key(n, PARAM_KEYS[kind]))
        if kind == "categorical":
            if "choices" not in fields:
                self.issues.add(node, join(key, "choices"), "missing; a list of values")
                return None
            return CategoricalParam(name, tuple(self._choices(fields["choices"][1], key)))
        for required in ("low", "high"):
            if required not in fields:
                self.issues.add(node, join(key, required), "missing")
        if "low" not in fields or "high" not in fields:
            return None
        num = self._float if kind == "float" else self._int
        low = num(fields["low"][1], join(key, "low"))
        high = num(fields["high"][1], join(key, "high"))
        log = self._bool(fields["log"][1], join(key, "log")) if "log" in fields else False
        step = num(fields["step"][1], join(key, "step")) if "step" in fields else None
        if kind == "float":
            return FloatParam(name, float(low), float(high), log, step)
        return IntParam(name, int(low), int(high), log, None if step is None else int(step))

    def _pruner(self, node: Node) -> PrunerSpec:
        if isinstance(node, ScalarNode):
            return PrunerSpec(kind=self._str(node, "pruner"))
        values: dict[str, Any] = {}
        for name, k, v in self._mapping(node, "pruner"):
            key = join("pruner", name)
            self._note(key, v)
            if name == "type":
                values["kind"] = self._str(v, key)
            elif name in PRUNER_KEYS:
                values[name] = self._int(v, key)
            else:
                self.issues.add(k, key, unknown_key(name, PRUNER_KEYS))
        return PrunerSpec(**values)

    def _gpus(self, node: Node) -> tuple[int, int]:
        text = node.value if isinstance(node, ScalarNode) else ""
        m = _GPUS.fullmatch(str(text))
        if m is None or int(m.group(1)) > MAX_GPUS or int(m.group(2) or 0) > MAX_GPUS:
            self.issues.add(
                node,
                "gpus",
                f"give N, or MIN:MAX for elastic trials, at most {MAX_GPUS:,}; "
                f"got {describe(node)}",
            )
            return (1, 1)
        low = int(m.group(1))
        return low, int(m.group(2)) if m.group(2) is not None else low

    def _env(self, node: Node) -> dict[str, str]:
        out = {}
        for name, _, v in self._mapping(node, "env"):
            if isinstance(v, ScalarNode) and v.tag in (STR, INT, FLOAT, BOOL):
                out[name] = str(v.value)
            else:
                self.issues.add(v, join("env", name), f"must be a plain value, got {describe(v)}")
        return out

    # -- values -------------------------------------------------------------

    def _choices(self, node: Node, key: str) -> list[Choice]:
        key = join(key, "choices")
        if not isinstance(node, SequenceNode):
            self.issues.add(node, key, f"must be a list of values, got {describe(node)}")
            return []
        out: list[Choice] = []
        for item in node.value:
            # Typed as YAML reads them: 0x10 is 16, 1_000 is 1000, .inf is not a choice.
            got = value(item) if isinstance(item, ScalarNode) else None
            if isinstance(item, ScalarNode) and item.tag == STR:
                out.append(str(item.value))
            elif type(got) is _CHOICE_TYPES.get(item.tag) and _finite(got):
                out.append(got)  # type: ignore[arg-type]
            else:
                why = "plain values (finite numbers, text, true or false)"
                self.issues.add(item, key, f"choices are {why}, got {describe(item)}")
        return out
