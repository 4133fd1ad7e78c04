"""The service file (YAML) → a ServiceSpec with its defaults filled in, or every problem
at once as `FILE:LINE: KEY: REASON`, the way the experiment file (hpo/file.py) and the
policy loader report: the same composed-node reading (policy/nodes.py) keeps line
numbers, catches repeated keys and refuses anchors, aliases and oversized files.

Values are read and type-checked here; the rules that span fields (min <= max, a
floor of 0 needs scale_to_zero, bounds...) are spec.problems(), whose field names
(the wire's: min_replicas, window_s...) are mapped back onto the file's keys and
lines. The format is in docs/serve.md; examples/serve/service.yaml is an example.

A value given explicitly is checked as given: `autoscale.window: 0` is an error, not
the default (on the wire a zero means "not given"; in a file, an absent key does).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from schedulerd.bounds import MAX_ENV_VALUE
from schedulerd.policy.errors import Issues, PolicyError, PolicyIssue, TooManyIssues
from schedulerd.policy.fields import parse_duration
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
from schedulerd.serve.spec import ServiceSpec, problems

TOP_KEYS = (
    *("name", "consumer", "user", "command", "env", "workdir", "gpus", "replicas"),
    *("autoscale", "readiness_path", "public", "priority", "queue", "request_timeout"),
)
SECTION_KEYS = {
    "replicas": ("min", "max"),
    "autoscale": ("target_in_flight", "window", "scale_down_delay", "scale_to_zero"),
    "queue": ("max", "timeout"),
}
# The file's key of each ServiceSpec field whose name differs (the others are the same).
FILE_KEYS = {
    "working_dir": "workdir",
    "gpus_per_replica": "gpus",
    "min_replicas": "replicas.min",
    "max_replicas": "replicas.max",
    "target_in_flight": "autoscale.target_in_flight",
    "window_s": "autoscale.window",
    "scale_down_delay_s": "autoscale.scale_down_delay",
    "scale_to_zero": "autoscale.scale_to_zero",
    "max_queue": "queue.max",
    "queue_timeout_s": "queue.timeout",
    "request_timeout_s": "request_timeout",
}
SPEC_FIELDS_OF = {key: name for name, key in FILE_KEYS.items()}
# How each typed key is read; the other keys are text.
_INTS = ("gpus", "priority", "replicas.min", "replicas.max", "queue.max")
_FLOATS = ("autoscale.target_in_flight",)
_DURATIONS = ("autoscale.window", "autoscale.scale_down_delay", "queue.timeout", "request_timeout")
_BOOLS = ("public", "autoscale.scale_to_zero")
# Cross-field messages of spec.problems() name other fields by their wire names.
_MESSAGE_WORDS = {
    "above max_replicas (": "above replicas.max (",
    "needs scale_to_zero: true": "needs autoscale.scale_to_zero: true",
}
_DURATION_HELP = "a duration like 30s, 5m, 1h30m, or a number of seconds"
# Like an experiment file (no anchors, aliases or merge keys; 1 MiB, 32 levels; a value
# as long as an environment variable's). Numbers are bounded by spec.problems().
LIMITS = Limits("a service file", max_text=MAX_ENV_VALUE)


class ServiceFileError(PolicyError):
    """A service file that cannot be used; `issues` lists every problem, in line order."""

    def __str__(self) -> str:
        sources = sorted({i.source for i in self.issues})
        n = len(self.issues)
        head = f"service file {', '.join(sources)} has {n} error{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {i}" for i in self.issues)])

    def __reduce__(self) -> tuple[type[PolicyError], tuple[tuple[PolicyIssue, ...]]]:
        return (ServiceFileError, (self.issues,))


def load_service_file(path: str | Path) -> ServiceSpec:
    """The service a file describes, defaults filled in; a relative `workdir` is taken
    from the file's folder (default: that folder)."""
    source = str(path)
    try:
        with open(path, "rb") as f:  # no more than a file may hold: the rest is refused
            data = f.read(LIMITS.max_bytes + 1)
        text = data.decode("utf-8")
        base = Path(path).resolve().parent
    except (OSError, UnicodeDecodeError, ValueError, RuntimeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise ServiceFileError([PolicyIssue(source, 0, "", f"cannot read: {why}")]) from None
    return load_service_text(text, source, base)


def load_service_text(
    text: str, source: str = "<service>", base: Path | None = None
) -> ServiceSpec:
    """Parse and check a service file's text; a relative workdir is taken from `base`
    (default: the current directory)."""
    issues = Issues(source)
    reader = _Reader(issues)
    spec = None
    try:
        doc = compose(text, issues, LIMITS)
        if doc is not None and not issues:
            spec = reader.document(doc, base or Path.cwd())
        elif doc is None and not issues:
            issues.add(1, "", "the file is empty; see docs/serve.md for the format")
        if spec is not None and not issues:
            for field, why in problems(spec):
                key = file_key(field)
                issues.add(reader.line_of(key), key, _reword(field, why))
    except TooManyIssues:  # reported below, with a note that there are more
        pass
    try:
        issues.raise_if_any()
    except PolicyError as e:
        raise ServiceFileError(e.issues) from None
    assert spec is not None
    return spec


def file_key(field: str) -> str:
    """A spec field as problems() names it ("min_replicas", "env[A]", "command[2]") →
    the file's key for it ("replicas.min", "env.A", "command[2]"), as the reader and
    the composer name them."""
    if field.startswith("env[") and field.endswith("]"):
        return join("env", field[4:-1])
    cut = min((i for i in (field.find("["), field.find(".")) if i >= 0), default=len(field))
    head, rest = field[:cut], field[cut:]
    return FILE_KEYS.get(head, head) + rest


def _reword(field: str, why: str) -> str:
    # Refusals from schedulerd.bounds start with their field ("consumer: ..."): once is enough.
    why = why.removeprefix(f"{field}: ")
    for wire, words in _MESSAGE_WORDS.items():
        why = why.replace(wire, words)
    return why


class _Reader(FileReader):
    def document(self, doc: Node, base: Path) -> ServiceSpec | None:
        if not isinstance(doc, MappingNode):
            self.issues.add(doc, "", f"the file must be a mapping, got {describe(doc)}")
            return None
        got: dict[str, Any] = {}  # ServiceSpec field → value, for the keys the file gives
        for name, k, v in entries(doc, "", self.issues):
            self._note(name, v)
            if name not in TOP_KEYS:
                self.issues.add(k, name, unknown_key(name, TOP_KEYS))
            elif name == "command":
                got["command"] = tuple(self._strings(v, name))
            elif name == "env":
                got["env"] = self._env(v)
            elif name == "replicas" and not isinstance(v, MappingNode):
                got["min_replicas"] = got["max_replicas"] = self._replicas(v)
            elif name in SECTION_KEYS:
                for sub, sk, sv in self._mapping(v, name):
                    key = join(name, sub)
                    self._note(key, sv)
                    if sub not in SECTION_KEYS[name]:
                        self.issues.add(sk, key, unknown_key(sub, SECTION_KEYS[name]))
                    else:
                        got[SPEC_FIELDS_OF[key]] = self._typed(sv, key)
            else:
                got[SPEC_FIELDS_OF.get(name, name)] = self._typed(v, name)
        for required in ("name", "consumer", "command"):
            if required not in got:
                self.issues.add(doc, required, "missing; see docs/serve.md for the format")
        if self.issues:
            return None
        try:
            got["working_dir"] = str((base / (got.get("working_dir") or ".")).resolve())
        except (OSError, ValueError, RuntimeError) as e:  # a NUL, a symlink loop...
            self.issues.add(self.line_of("workdir"), "workdir", f"not a usable path: {e}")
            return None
        # max 0 (not given) is filled from min by with_defaults(); then what the file
        # gives explicitly is put back, zeros included, for problems() to judge.
        given = ServiceSpec(**{"user": "", "max_replicas": 0, **got})  # user "": the caller
        return replace(given.with_defaults(), **got)

    def _replicas(self, node: Node) -> int:
        """`replicas: N`: a fixed number (min = max = N)."""
        if isinstance(node, ScalarNode) and node.tag == INT:
            return self._int(node, "replicas")
        why = "a whole number, or a mapping {min: N, max: M}"
        self.issues.add(node, "replicas", f"must be {why}, got {describe(node)}")
        return 0

    def _typed(self, node: Node, key: str) -> object:
        if key in _INTS:
            return self._int(node, key)
        if key in _FLOATS:
            return self._float(node, key)
        if key in _DURATIONS:
            return self._duration(node, key)
        if key in _BOOLS:
            return self._bool(node, key)
        return self._str(node, key)

    # -- values -------------------------------------------------------------

    def _env(self, node: Node) -> dict[str, str]:
        out = {}
        for name, _, v in self._mapping(node, "env"):
            key = join("env", name)
            self._note(key, v)
            if isinstance(v, ScalarNode) and v.tag in (STR, INT, FLOAT, BOOL):
                out[name] = str(v.value)
            else:
                self.issues.add(v, key, f"must be a plain value, got {describe(v)}")
        return out

    def _duration(self, node: Node, key: str) -> float:
        """Seconds, as a policy's durations (grace, min_runtime) read: "30s", "5m",
        "1h30m", or a plain number of seconds. The bounds are problems()'s."""
        seconds: float | None = None
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT):
            number = value(node)
            if isinstance(number, int | float) and not isinstance(number, bool):
                try:
                    seconds = float(number)
                except OverflowError:  # an int of 400 digits
                    seconds = None
        elif isinstance(node, ScalarNode) and node.tag == STR:
            seconds = parse_duration(node.value.strip())
        if seconds is not None and math.isfinite(seconds):
            return seconds
        self.issues.add(node, key, f"must be {_DURATION_HELP}; got {describe(node)}")
        return 0.0
