"""The service file: a good file → a spec with its defaults; every problem at once as
FILE:LINE: KEY: REASON, type errors and spec.problems() alike (docs/serve.md)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from schedulerd.serve.codec import spec_from_pb, spec_to_pb
from schedulerd.serve.file import (
    ServiceFileError,
    file_key,
    load_service_file,
    load_service_text,
)
from schedulerd.serve.spec import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_SCALE_DOWN_DELAY_S,
    DEFAULT_TARGET,
    DEFAULT_WINDOW_S,
    ServiceSpec,
)

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
name: m
consumer: /team
command: [python, serve.py]
"""

FULL = """\
name: spirals-2
consumer: /team/vision
user: alice
command: [python, serve.py, --port-file, 3]
env: {OMP_NUM_THREADS: 1, MODE: fast}
workdir: /srv/models
gpus: 2
replicas: {min: 0, max: 6}
autoscale:
  target_in_flight: 2.5
  window: 1m30s
  scale_down_delay: 45
  scale_to_zero: yes
readiness_path: /healthz?deep=1
public: true
priority: -5
queue: {max: 10, timeout: 2.5s}
request_timeout: 1h
"""


def test_a_minimal_file_gets_every_default(tmp_path: Path) -> None:
    spec = load_service_text(MINIMAL, "s.yaml", tmp_path)
    assert spec == ServiceSpec(
        name="m",
        consumer="/team",
        user="",
        command=("python", "serve.py"),
        working_dir=str(tmp_path),
        gpus_per_replica=1,
        min_replicas=1,
        max_replicas=1,
        target_in_flight=DEFAULT_TARGET,
        readiness_path="/",
        scale_down_delay_s=DEFAULT_SCALE_DOWN_DELAY_S,
        window_s=DEFAULT_WINDOW_S,
        max_queue=DEFAULT_MAX_QUEUE,
        queue_timeout_s=DEFAULT_QUEUE_TIMEOUT_S,
        request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
    )
    assert spec == spec.with_defaults()


def test_every_key_is_read() -> None:
    spec = load_service_text(FULL, "s.yaml")
    assert spec == ServiceSpec(
        name="spirals-2",
        consumer="/team/vision",
        user="alice",
        command=("python", "serve.py", "--port-file", "3"),
        env={"OMP_NUM_THREADS": "1", "MODE": "fast"},
        working_dir="/srv/models",
        gpus_per_replica=2,
        min_replicas=0,
        max_replicas=6,
        target_in_flight=2.5,
        readiness_path="/healthz?deep=1",
        scale_down_delay_s=45.0,
        scale_to_zero=True,
        priority=-5,
        public=True,
        window_s=90.0,
        max_queue=10,
        queue_timeout_s=2.5,
        request_timeout_s=3600.0,
    )
    # What the client sends comes back as it was.
    assert spec_from_pb(spec_to_pb(spec)) == spec


@pytest.mark.parametrize(
    ("extra", "field", "want"),
    [
        ("replicas: 3", "max_replicas", 3),  # a plain number: min = max
        ("replicas: {min: 3}", "max_replicas", 3),  # max defaults to min
        ("replicas: {max: 5}", "min_replicas", 1),  # min defaults to 1
        ("autoscale: {window: 2.5}", "window_s", 2.5),
        ("autoscale: {window: 1_000}", "window_s", 1000.0),
        ("autoscale: {target_in_flight: 1e1}", "target_in_flight", 10.0),
        ("autoscale: {scale_down_delay: 5m}", "scale_down_delay_s", 300.0),
        ("request_timeout: 1d", "request_timeout_s", 86400.0),
        ("workdir: sub/dir", "working_dir", "/base/sub/dir"),
    ],
)
def test_values_as_written(extra: str, field: str, want: object) -> None:
    spec = load_service_text(MINIMAL + extra + "\n", "s.yaml", Path("/base"))
    assert getattr(spec, field) == want


# Each bad file: the lines its message must hold, FILE:LINE: KEY: REASON.
BAD_CASES = {
    "unknown key, with a suggestion": (
        "replica: 2",
        "s.yaml:4: replica: unknown key 'replica'; did you mean 'replicas'?",
    ),
    "unknown key, no close match: the allowed keys": (
        "colour: red",
        "s.yaml:4: colour: unknown key 'colour' (allowed: name, consumer,",
    ),
    "unknown key in a section": (
        "autoscale: {scale_down_dely: 2m}",
        "s.yaml:4: autoscale.scale_down_dely: unknown key 'scale_down_dely'; "
        "did you mean 'scale_down_delay'?",
    ),
    "a section that is not a mapping": ("queue: 5", "s.yaml:4: queue: must be a mapping, got 5"),
    "replicas neither a number nor a mapping": (
        "replicas: [1, 2]",
        "s.yaml:4: replicas: must be a whole number, or a mapping {min: N, max: M}, got a list",
    ),
    "gpus as text": ("gpus: two", "s.yaml:4: gpus: must be a whole number, got 'two'"),
    "a fraction of a replica": (
        "replicas: {min: 1.5}",
        "s.yaml:4: replicas.min: must be a whole number, got 1.5",
    ),
    "a target that is not a number": (
        "autoscale:\n  target_in_flight: lots",
        "s.yaml:5: autoscale.target_in_flight: must be a number, got 'lots'",
    ),
    "a duration that is not one": (
        "queue: {timeout: 1h 5}",
        "s.yaml:4: queue.timeout: must be a duration like 30s, 5m, 1h30m, or a number of "
        "seconds; got '1h 5'",
    ),
    "a duration that is infinite": (
        "request_timeout: .inf",
        "s.yaml:4: request_timeout: must be a duration",
    ),
    "a flag that is not a flag": (
        "public: maybe",
        "s.yaml:4: public: must be true or false, got 'maybe'",
    ),
    "a name that is not text": ("user: [a]", "s.yaml:4: user: must be text, got a list"),
    "an env value that is a mapping": (
        "env:\n  A: 1\n  B: {c: d}",
        "s.yaml:6: env.B: must be a plain value, got a mapping",
    ),
    "a NUL in an argument": (
        'command: [python, "a\\0b"]',
        "s.yaml:3: command[1]: contains a NUL character",
    ),
    "a value longer than a variable may be": (
        "env:\n  B: " + "y" * 40_000,
        "s.yaml:5: env.B: text of 40,000 characters, at most 32,768",
    ),
    "a repeated key": ("gpus: 1\ngpus: 2", "s.yaml:5: gpus: duplicate key 'gpus' (first set at"),
    "an alias": ("env: &e {A: 1}\nuser: *e", "s.yaml:4: env: YAML anchors (&e) are not allowed"),
}


def _file(extra: str) -> str:
    """MINIMAL with `extra`: in place of MINIMAL's line of the same key, else after it."""
    lines = MINIMAL.splitlines()
    key = extra.split(":")[0]
    for i, line in enumerate(lines):
        if line.split(":")[0] == key:
            lines[i] = extra
            return "\n".join(lines) + "\n"
    return MINIMAL + extra + "\n"


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_type_errors_name_file_line_and_key(case: str) -> None:
    extra, want = BAD_CASES[case]
    with pytest.raises(ServiceFileError) as e:
        load_service_text(_file(extra), "s.yaml")
    assert want in str(e.value), str(e.value)


# Cross-field rules and bounds (spec.problems()), mapped back onto the file's keys.
PROBLEM_CASES = {
    "a bad name": ("name: My_Model", "s.yaml:1: name: 'My_Model': use lowercase letters"),
    "a relative consumer": ("consumer: team", "s.yaml:2: consumer: a leaf consumer path"),
    "a bad consumer name": ("consumer: /Team!", "s.yaml:2: consumer: '/Team!' is not a consumer"),
    "min above max": (
        "replicas: {min: 4, max: 3}",
        "s.yaml:4: replicas.min: 4 is above replicas.max (3)",
    ),
    "a floor of zero without scale_to_zero": (
        "replicas:\n  max: 2\n  min: 0",
        "s.yaml:6: replicas.min: 0 needs autoscale.scale_to_zero: true",
    ),
    "too many replicas": (
        "replicas: {max: 1001}",
        "s.yaml:4: replicas.max: at most 1,000, got 1,001",
    ),
    "an explicit max of zero is not the default": (
        "replicas: {min: 0, max: 0}\nautoscale: {scale_to_zero: true}",
        "s.yaml:4: replicas.max: at least 1",
    ),
    "zero GPUs": ("gpus: 0", "s.yaml:4: gpus: from 1 to 64, got 0"),
    "too many GPUs for a node": ("gpus: 65", "s.yaml:4: gpus: from 1 to 64, got 65"),
    "an explicit window of zero is not the default": (
        "autoscale:\n  window: 0s",
        "s.yaml:5: autoscale.window: seconds, from 0.1 to 86400, got 0.0",
    ),
    "a negative delay": (
        "autoscale: {scale_down_delay: -1}",
        "s.yaml:4: autoscale.scale_down_delay: seconds, from 0.1 to 86400",
    ),
    "a timeout over a day": (
        "request_timeout: 2d",
        "s.yaml:4: request_timeout: seconds, from 0.1 to 86400, got 172800.0",
    ),
    "a queue timeout over a day": ("queue: {timeout: 25h}", "s.yaml:4: queue.timeout: seconds"),
    "a target of zero": (
        "autoscale: {target_in_flight: 0}",
        "s.yaml:4: autoscale.target_in_flight: above 0 and at most 100000, got 0.0",
    ),
    "a huge target": ("autoscale: {target_in_flight: 1e6}", "autoscale.target_in_flight: above 0"),
    "a queue too long": ("queue: {max: 10001}", "s.yaml:4: queue.max: from 1 to 10,000, got"),
    "a readiness path that is not a path": (
        "readiness_path: healthz",
        "s.yaml:4: readiness_path: 'healthz': a URL path starting with '/'",
    ),
    "a priority out of bounds": (
        "priority: 2000000",
        "s.yaml:4: priority: 2,000,000 is outside -1,000,000..1,000,000",
    ),
    "a reserved variable": (
        "env: {SCHEDULERD_PORT: 80}",
        "s.yaml:4: env: SCHEDULERD_PORT: SCHEDULERD_ names are set by schedulerd",
    ),
    "a variable that is too long": (
        "env:\n  A: x\n  B: " + "é" * 20_000,  # 20,000 characters, 40,000 bytes
        "s.yaml:6: env.B: 40,000 bytes, at most 32,768",
    ),
}


@pytest.mark.parametrize("case", list(PROBLEM_CASES))
def test_spec_problems_point_at_the_files_key_and_line(case: str) -> None:
    extra, want = PROBLEM_CASES[case]
    with pytest.raises(ServiceFileError) as e:
        load_service_text(_file(extra), "s.yaml")
    message = str(e.value)
    assert want in message, message
    # A bounds refusal names its field once, not "consumer: consumer: ...".
    assert ": consumer: consumer" not in message


def test_every_problem_at_once_in_line_order() -> None:
    text = (
        "name: Bad\n"
        "consumer: team\n"
        "command: [python, s.py]\n"
        "replicas: {min: 5, max: 2}\n"
        "gpus: 0\n"
        "queue: {max: 0}\n"
    )
    with pytest.raises(ServiceFileError) as e:
        load_service_text(text, "svc.yaml")
    lines = str(e.value).splitlines()
    assert lines[0] == "service file svc.yaml has 5 errors:"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [
        "svc.yaml:1",
        "svc.yaml:2",
        "svc.yaml:4",
        "svc.yaml:5",
        "svc.yaml:6",
    ]


def test_missing_keys_empty_files_and_syntax_errors() -> None:
    with pytest.raises(ServiceFileError) as e:
        load_service_text("gpus: 1\n", "s.yaml")
    for key in ("name", "consumer", "command"):
        assert f"s.yaml:1: {key}: missing; see docs/serve.md" in str(e.value)
    with pytest.raises(ServiceFileError, match=r"s.yaml:1: the file is empty"):
        load_service_text("", "s.yaml")
    with pytest.raises(ServiceFileError, match=r"s.yaml:1: the file must be a mapping"):
        load_service_text("- a\n", "s.yaml")
    with pytest.raises(ServiceFileError, match=r"s.yaml:2: YAML syntax error"):
        load_service_text("a: [1\nb: 2\n", "s.yaml")
    with pytest.raises(ServiceFileError, match=r"s.yaml:3: command: must be a list \(argv\)"):
        load_service_text(MINIMAL.replace("[python, serve.py]", "python serve.py"), "s.yaml")
    with pytest.raises(ServiceFileError, match=r"s.yaml:3: command\[1\]: must be text"):
        load_service_text(MINIMAL.replace("serve.py]", "[a]]"), "s.yaml")


def test_a_file_too_large_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(MINIMAL + "# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ServiceFileError, match="too large for a service file"):
        load_service_file(path)


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(ServiceFileError, match=r"nope.yaml:0: cannot read: No such file"):
        load_service_file(tmp_path / "nope.yaml")


def test_the_error_survives_pickling_and_is_a_policy_style_error() -> None:
    with pytest.raises(ServiceFileError) as e:
        load_service_text("gpus: x\n", "s.yaml")
    again = pickle.loads(pickle.dumps(e.value))
    assert isinstance(again, ServiceFileError) and again.issues == e.value.issues
    assert isinstance(e.value, ValueError)


def test_the_example_file_loads() -> None:
    spec = load_service_file(ROOT / "examples" / "serve" / "service.yaml")
    assert spec.name == "spirals" and spec.consumer == "/default"
    assert spec.command[:2] == ("python", "model_server.py")
    assert spec.working_dir == str(ROOT / "examples" / "serve")
    assert (spec.min_replicas, spec.max_replicas) == (1, 4)
    assert spec.readiness_path == "/healthz"
    assert (ROOT / "examples" / "serve" / spec.command[1]).is_file()


@pytest.mark.parametrize(
    ("field", "key"),
    [
        ("min_replicas", "replicas.min"),
        ("window_s", "autoscale.window"),
        ("queue_timeout_s", "queue.timeout"),
        ("working_dir", "workdir"),
        ("env[A_B]", "env.A_B"),
        ("command[3]", "command[3]"),
        ("name", "name"),
    ],
)
def test_spec_fields_map_to_file_keys(field: str, key: str) -> None:
    assert file_key(field) == key
