"""Hostile policy and experiment files are refused, cheaply, with the line and key of the
problem: YAML aliases and merge keys, huge or non-finite numbers, files too big or too
deep, bad user names. And whatever text comes in, the loaders raise their own error and
nothing else."""

from __future__ import annotations

import contextlib
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulerd.hpo.file import PARAM_KEYS, PRUNER_KEYS, ExperimentFileError, load_experiment
from schedulerd.hpo.file import TOP_KEYS as TOP
from schedulerd.policy import PolicyError, PolicyIssue, load_policy, load_policy_file
from schedulerd.policy.errors import MAX_ISSUES, Issues
from schedulerd.policy.loader import CONSUMER_KEYS, MAX_CONSUMERS, TOP_KEYS
from schedulerd.policy.nodes import Limits, compose


def issues_of(text: str) -> tuple[PolicyIssue, ...]:
    with pytest.raises(PolicyError) as e:
        load_policy(textwrap.dedent(text), "p.yaml")
    return e.value.issues


def alias_bomb(width: int = 10, depth: int = 6) -> str:
    """Each level is `width` aliases of the level below: width**depth consumers once
    expanded (10**6 by default), in about a kilobyte."""
    lines = ["version: 1", "consumers:", "  l0: &l0 {}"]
    for level in range(1, depth + 1):
        kids = ", ".join(f"c{i}: *l{level - 1}" for i in range(width))
        lines.append(f"  l{level}: &l{level} {{consumers: {{{kids}}}}}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once_naming_line_and_key() -> None:
    text = alias_bomb()
    assert len(text) < 1200
    started = time.perf_counter()
    with pytest.raises(PolicyError) as e:
        load_policy(text, "bomb.yaml")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"took {elapsed:.2f}s"
    lines = [str(i) for i in e.value.issues]
    assert "bomb.yaml:3: consumers.l0: YAML anchors (&l0) are not allowed in a policy" in lines
    assert (
        "bomb.yaml:4: consumers.l1.consumers.c0: YAML aliases (*l0) are not allowed in a policy"
        in lines
    )


def test_a_long_alias_file_stops_at_the_issue_cap() -> None:
    # Every alias is an issue: the report stops at MAX_ISSUES, with a note, at once.
    text = "version: 1\nconsumers:\n  a: &a {}\n" + "".join(f"  b{i}: *a\n" for i in range(5000))
    started = time.perf_counter()
    issues = issues_of(text)
    assert time.perf_counter() - started < 1.0
    assert len(issues) == MAX_ISSUES + 1
    assert issues[-1].line == 0 and "more errors not listed" in issues[-1].message


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        pytest.param(
            "version: 1\nconsumers:\n  a:\n    <<: {share: 2}\n",
            4,
            "consumers.a",
            "YAML merge keys (<<) are not allowed in a policy",
            id="merge-key-of-an-inline-mapping",
        ),
        pytest.param(
            "version: 1\nconsumers:\n  a: {share: *x}\n",
            3,
            "consumers.a.share",
            "YAML aliases (*x) are not allowed",
            id="undefined-alias",
        ),
        pytest.param(
            "version: 1\nusers: &u [alice]\nconsumers: {a: {users: *u}}\n",
            2,
            "users",
            "YAML anchors (&u) are not allowed",
            id="anchor-on-a-list",
        ),
    ],
)
def test_yaml_sharing_is_refused(text: str, line: int, key: str, fragment: str) -> None:
    issues = issues_of(text)
    assert any(i.line == line and i.key == key and fragment in i.message for i in issues), issues


NUMBERS = [
    ("share: 1.0e+308", "share", "from 0 to 1,000,000"),
    ("share: 1e308", "share", "from 0 to 1,000,000"),
    ("share: .nan", "share", "got .nan"),
    ("share: .inf", "share", "got .inf"),
    ("share: -.inf", "share", "got -.inf"),
    ("share: 1000001", "share", "from 0 to 1,000,000"),
    ("share: 99999999999999999999999999999999999", "share", "from 0 to 1,000,000"),
    ("owned: 4294967296", "owned", "from 0 to 1,000,000"),
    ("owned: 0x7fffffffffffffffff", "owned", "from 0 to 1,000,000"),
    ("limit: 1000001", "limit", "from 1 to 1,000,000"),
    ("grace: 1.0e+12", "grace", "at most a year"),
    ("grace: .inf", "grace", "at most a year"),
    ("grace: 367d", "grace", "at most a year"),
    ("grace: " + "9" * 400 + "s", "grace", "at most a year"),
    ("min_runtime: 99999999h", "min_runtime", "at most a year"),
    ("min_runtime: -1", "min_runtime", "at most a year"),
]


@pytest.mark.parametrize(
    ("setting", "key", "fragment"), [pytest.param(*n, id=n[0][:30]) for n in NUMBERS]
)
def test_numbers_are_finite_and_bounded(setting: str, key: str, fragment: str) -> None:
    issues = issues_of(f"version: 1\nconsumers:\n  a:\n    {setting}\n")
    assert [(i.line, i.key) for i in issues] == [(4, f"consumers.a.{key}")]
    assert fragment in issues[0].message, issues[0]


def test_the_largest_allowed_numbers_load() -> None:
    text = (
        "version: 1\nconsumers:\n  a: {owned: 1000000, limit: 1000000, share: 1000000, "
        "grace: 366d, min_runtime: 31622400}\n"
    )
    a = load_policy(text).consumers["/a"]  # type: ignore[index]
    assert (a.owned, a.limit, a.share, a.grace_s, a.min_runtime_s) == (
        1_000_000,
        1_000_000,
        1e6,
        366 * 86400.0,
        366 * 86400.0,
    )


def test_defaults_durations_are_bounded_too() -> None:
    issues = issues_of("version: 1\ndefaults: {grace: 400d}\nconsumers: {a: {}}\n")
    assert [(i.line, i.key) for i in issues] == [(2, "defaults.grace")]


@pytest.mark.parametrize(
    ("users", "index", "fragment"),
    [
        pytest.param("[Alice]", 0, "lowercase", id="uppercase"),
        pytest.param('["bo b"]', 0, "user name", id="space"),
        pytest.param("[ok, 1abc]", 1, "got '1abc'", id="leading-digit"),
        pytest.param(f"[{'x' * 33}]", 0, "at most 32 characters", id="too-long"),
        pytest.param('["a;rm -rf"]', 0, "user name", id="punctuation"),
        pytest.param("[alice, 3]", 1, "quote names", id="a-number"),
    ],
)
def test_bad_user_names_are_refused(users: str, index: int, fragment: str) -> None:
    for key in ("users", "admins"):
        issues = issues_of(f"version: 1\nconsumers:\n  a: {{{key}: {users}}}\n")
        assert [(i.line, i.key) for i in issues] == [(3, f"consumers.a.{key}[{index}]")]
        assert fragment in issues[0].message


def test_star_means_everyone_in_users_but_not_in_admins() -> None:
    load_policy('version: 1\nconsumers:\n  a: {users: ["*", alice]}\n')
    issues = issues_of('version: 1\nadmins: ["*"]\nconsumers: {a: {}}\n')
    assert [(i.line, i.key) for i in issues] == [(2, "admins[0]")]
    issues = issues_of("version: 1\nadmins: bob\nconsumers: {a: {}}\n")
    assert "must be a list of user names, got 'bob' (for one user write [bob])" in str(issues[0])


def test_a_file_too_large_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    text = "version: 1\nconsumers:\n  a: {}\n" + "# padding\n" * 110_000
    started = time.perf_counter()
    issues = issues_of(text)
    assert time.perf_counter() - started < 0.5
    assert [(i.line, i.key) for i in issues] == [(0, "")]
    assert "too large for a policy (at most 1,048,576)" in issues[0].message
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="too large for a policy"):
        load_policy_file(path)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    for text in ("[" * 50_000, "a: " + "[" * 40 + "]" * 40, "{a: " * 100 + "1" + "}" * 100):
        issues = issues_of(text)
        assert any("nested more than 32 levels deep" in i.message for i in issues), issues


def test_values_are_counted_and_long_text_refused() -> None:
    issues = Issues("t.yaml")
    assert compose("[" + "1, " * 200 + "]", issues, Limits("a test", max_nodes=100)) is None
    with pytest.raises(PolicyError) as e:
        issues.raise_if_any()
    assert [str(i) for i in e.value.issues] == [
        "t.yaml:1: [99]: more than 100 YAML values: too large for a test"
    ]
    long = issues_of(f"version: 1\nconsumers:\n  a: {{users: [{'a' * 2000}]}}\n")
    assert any("text of 2,000 characters, at most 1,024" in i.message for i in long)


def test_nul_characters_are_refused() -> None:
    issues = issues_of('version: 1\nconsumers:\n  a: {users: ["ali\\0ce"]}\n')
    assert any(i.key == "consumers.a.users[0]" and "NUL" in i.message for i in issues)


def test_too_many_consumers() -> None:
    kids = "".join(f"  c{i}: {{}}\n" for i in range(MAX_CONSUMERS + 1))
    issues = issues_of("version: 1\nconsumers:\n" + kids)
    last = MAX_CONSUMERS
    assert [(i.line, i.key) for i in issues] == [(last + 3, f"consumers.c{last}")]
    assert "more than 10,000 consumers" in issues[0].message


def test_consumer_names_and_paths_are_bounded() -> None:
    issues = issues_of(f"version: 1\nconsumers:\n  {'a' * 65}: {{}}\n")
    assert "at most 64" in issues[0].message
    text = "version: 1\nconsumers:\n"
    indent = "  "
    for i in range(6):  # 6 names of 60 characters: a path of 366
        text += f"{indent}{chr(97 + i) * 60}:\n{indent}  consumers:\n"
        indent += "    "
    text += f"{indent}leaf: {{}}\n"
    issues = issues_of(text)
    assert any("longer than 256 characters" in i.message for i in issues), issues


# --- fuzzing: only the loaders' own errors, whatever comes in ----------------------------

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
KEYS = st.sampled_from([*TOP_KEYS, *CONSUMER_KEYS, "a", "b", "<<", "x" * 70])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["*", "1h30m", ".inf", ".nan", "1e308", "0x10", "1:30", "-1", "alice"]),
)


def _trees() -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), inner, max_size=5),
        ),
        max_leaves=30,
    )


def _policy_like() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"version": st.sampled_from([1, 2, "1"]), "consumers": _trees()},
        optional={"users": _trees(), "admins": _trees(), "run_as_root": _trees()},
    )


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_policy_text_only_raises_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        load_policy(text)


@FUZZ
@given(st.one_of(_policy_like(), _trees()))
def test_fuzz_policy_structures_only_raise_policy_error(data: Any) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    with contextlib.suppress(PolicyError):
        load_policy(text)


# --- experiment files: the same composer, the same refusals -------------------------------

EXPERIMENT = """\
consumer: /team
command: [python, t.py, "{lr}"]
params:
  lr: {type: float, low: 0.001, high: 0.1}
max_trials: 10
"""


def experiment_issues(text: str) -> list[str]:
    with pytest.raises(ExperimentFileError) as e:
        load_experiment(text, "exp.yaml", Path("/tmp"), "me")
    return [str(i) for i in e.value.issues]


def test_the_base_experiment_loads() -> None:
    assert load_experiment(EXPERIMENT, "exp.yaml", Path("/tmp"), "me").max_trials == 10


def test_experiment_aliases_are_refused_naming_an_experiment_file() -> None:
    text = EXPERIMENT.replace("max_trials: 10", "max_trials: &n 10\nmax_parallel: *n")
    assert experiment_issues(text) == [
        "exp.yaml:5: max_trials: YAML anchors (&n) are not allowed in an experiment file",
        "exp.yaml:6: max_parallel: YAML aliases (*n) are not allowed in an experiment file",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            ("max_trials: 10", "max_trials: 1000000000"),
            "exp.yaml:5: max_trials: 1,000,000,000 trials, at most 100,000",
            id="trials",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\nmax_parallel: 100000"),
            "exp.yaml:6: max_parallel: 100,000, at most 1,000",
            id="parallelism",
        ),
        pytest.param(
            ("high: 0.1", "high: 1.0e+300"),
            "exp.yaml:4: params.lr.high: must be a finite number within +-1e15, got 1e+300",
            id="float-range",
        ),
        pytest.param(
            ("high: 0.1", "high: .inf"),
            "exp.yaml:4: params.lr.high: must be a number, got .inf",
            id="float-infinite",
        ),
        pytest.param(
            (
                "{type: float, low: 0.001, high: 0.1}",
                "{type: int, low: 0, high: 0x7fffffffffffffff}",
            ),
            "exp.yaml:4: params.lr.high: must be a finite number within +-1e15",
            id="int-range",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\nseed: -1"),
            "exp.yaml:6: seed: must be from 0 to 4,294,967,295, got -1",
            id="seed",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\ngpus: 1:4294967295"),
            "exp.yaml:6: gpus: give N, or MIN:MAX for elastic trials, at most 1,000,000",
            id="gpus",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\ngpus: ²"),
            "exp.yaml:6: gpus: give N, or MIN:MAX",
            id="gpus-unicode-digit",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\npriority: 99999999999"),
            "exp.yaml:6: priority: 99,999,999,999 is outside -1,000,000..1,000,000",
            id="priority",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\npruner: {type: asha, min_resource: 10000000000}"),
            "exp.yaml:6: pruner.min_resource: at most 1,000,000,000",
            id="pruner",
        ),
        pytest.param(
            ("max_trials: 10", 'max_trials: 10\nenv: {A: "\\0"}'),
            "exp.yaml:6: env.A: contains a NUL character (\\0)",
            id="nul",
        ),
        pytest.param(
            ("max_trials: 10", 'max_trials: 10\nworkdir: "a\\0b"'),
            "exp.yaml:6: workdir: contains a NUL character (\\0)",
            id="nul-in-workdir",
        ),
        pytest.param(
            ("max_trials: 10", "max_trials: 10\nenv: {1BAD: x}"),
            "exp.yaml:6: env: '1BAD' is not a variable name",
            id="env-name",
        ),
        pytest.param(
            ('[python, t.py, "{lr}"]', '[python, t.py, "{lr}"' + ", x" * 1100 + "]"),
            "exp.yaml:2: command: 1,103 arguments, at most 1,024",
            id="argv",
        ),
    ],
)
def test_experiment_numbers_and_sizes_are_bounded(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in EXPERIMENT
    issues = experiment_issues(EXPERIMENT.replace(old, new))
    assert any(i.startswith(expected) for i in issues), issues


def test_experiment_choices_are_read_as_yaml_types() -> None:
    text = EXPERIMENT.replace(
        "{type: float, low: 0.001, high: 0.1}", "{type: categorical, choices: [0x10, 1_000, yes]}"
    )
    spec = load_experiment(text, "exp.yaml", Path("/tmp"), "me")
    assert spec.params[0].choices == (16, 1000, True)  # type: ignore[union-attr]
    bad = text.replace("yes]", "yes, .nan, .inf, 0b2]")
    issues = experiment_issues(bad)
    assert issues and all("choices are plain values" in i for i in issues), issues
    many = text.replace("[0x10, 1_000, yes]", str(list(range(1001))))
    assert any("1,001 choices, at most 1,000" in i for i in experiment_issues(many))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_experiment_text_only_raises_its_error(text: str) -> None:
    with contextlib.suppress(ExperimentFileError):
        load_experiment(text, "exp.yaml", Path("/tmp"), "me")


EXPERIMENT_KEYS = st.sampled_from(
    [*TOP, *PARAM_KEYS["float"], "choices", *PRUNER_KEYS, "metric", "direction", "lr", "<<"]
)
PARAM_TYPES = st.sampled_from(["float", "int", "categorical", "x"])


def _experiment_like() -> st.SearchStrategy[Any]:
    value = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
    param = st.fixed_dictionaries(
        {"type": PARAM_TYPES},
        optional={k: value for k in ("low", "high", "step", "log", "choices")},
    )
    return st.fixed_dictionaries(
        {
            "consumer": st.sampled_from(["/a", "a", ""]),
            "command": st.one_of(st.lists(st.text(max_size=10), max_size=4), SCALARS),
            "params": st.dictionaries(st.text(max_size=6), st.one_of(param, _trees()), max_size=3),
        },
        optional={
            **{k: value for k in ("max_trials", "max_parallel", "seed", "priority", "gpus")},
            "env": st.dictionaries(st.text(max_size=6), value, max_size=3),
            "pruner": st.one_of(SCALARS, st.dictionaries(EXPERIMENT_KEYS, value, max_size=4)),
            "objective": _trees(),
            "sampler": st.sampled_from(["grid", "tpe", "random", 1]),
            "workdir": st.text(max_size=10),
        },
    )


@FUZZ
@given(st.one_of(_experiment_like(), _trees()))
def test_fuzz_experiment_structures_only_raise_its_error(data: Any) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    with contextlib.suppress(ExperimentFileError):
        load_experiment(text, "exp.yaml", Path("/tmp"), "me")
