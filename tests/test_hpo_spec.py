"""Experiment specs: validation names the field, the YAML file's errors name
FILE:LINE: KEY, and the API and store forms round-trip (docs/hpo.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.hpo.codec import spec_from_json, spec_from_pb, spec_to_json, spec_to_pb
from schedulerd.hpo.file import ExperimentFileError, load_experiment, load_experiment_file
from schedulerd.hpo.spec import (
    CategoricalParam,
    ExperimentSpec,
    FloatParam,
    IntParam,
    PrunerSpec,
    fill_command,
    grid_size,
    problems,
)

ROOT = Path(__file__).resolve().parent.parent


def _spec(**kw: object) -> ExperimentSpec:
    base: dict[str, object] = {
        "name": "t",
        "consumer": "/team",
        "user": "u",
        "command": ("python", "t.py", "--lr", "{lr}"),
        "params": (FloatParam("lr", 1e-4, 1e-1, log=True),),
        "max_trials": 4,
        "max_parallel": 2,
    }
    base.update(kw)
    return ExperimentSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"params": ()}, "params", "search space is empty"),
        ({"params": (FloatParam("lr", 0.5, 0.5),)}, "params.lr.high", "must be above low"),
        ({"params": (IntParam("lr", 5, 1),)}, "params.lr.high", "must be above low"),
        ({"params": (FloatParam("lr", 0.0, 1.0, log=True),)}, "params.lr.low", "log scale"),
        (
            {"sampler": "grid", "params": (FloatParam("lr", 0.1, 1.0),)},
            "params.lr",
            "grid sampler needs a finite list",
        ),
        ({"params": (CategoricalParam("lr", ()),)}, "params.lr.choices", "at least one"),
        ({"params": (CategoricalParam("lr", (1, 1)),)}, "params.lr.choices", "repeat"),
        ({"params": (CategoricalParam("lr", (1, True)),)}, "params.lr.choices", "are equal"),
        ({"params": (FloatParam("trial", 0.1, 1.0),)}, "params.trial", "not allowed"),
        ({"max_parallel": 0}, "max_parallel", "at least 1"),
        ({"max_trials": 0}, "max_trials", "at least 1"),
        ({"consumer": "team"}, "consumer", "consumer path"),
        ({"command": ("python", "{lrr}")}, "command[1]", "unknown placeholder {lrr}"),
        ({"command": ()}, "command", "required"),
        ({"sampler": "cmaes"}, "sampler", "one of tpe, random, grid"),
        ({"direction": "up"}, "objective.direction", "minimize or maximize"),
        ({"pruner": PrunerSpec("asha", reduction_factor=1)}, "pruner.reduction_factor", "2"),
        ({"pruner": PrunerSpec("fast")}, "pruner", "none, median, asha, hyperband"),
        ({"gpus_min": 2, "gpus_max": 1}, "gpus", "empty"),
        (
            {"sampler": "grid", "params": (IntParam("lr", 1, 3),), "max_trials": 4},
            "max_trials",
            "more than the grid's 3 points",
        ),
        (
            {"params": (FloatParam("lr", 0.1, 1.0, step=float("nan")),)},
            "params.lr.step",
            "a number above 0",
        ),
        (
            {"sampler": "grid", "params": (IntParam("lr", 0, 10**9),), "max_trials": 4},
            "params.lr",
            "at most 100,000",
        ),
        (
            {
                "sampler": "grid",
                "command": ("python", "t.py"),
                "params": (IntParam("a", 0, 999), IntParam("b", 0, 999)),
            },
            "params",
            "the grid would have 1,000,000 points",
        ),
    ],
)
def test_problems_name_the_field(change: dict[str, object], field: str, words: str) -> None:
    found = problems(_spec(**change))
    assert any(f == field and words in why for f, why in found), found


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"max_trials": 10**9}, "max_trials", "at most 100,000"),
        ({"max_parallel": 5000}, "max_parallel", "at most 1,000"),
        ({"seed": 2**40}, "seed", "from 0 to 4,294,967,295"),
        ({"priority": 2**31}, "priority", "outside -1,000,000..1,000,000"),
        ({"gpus_min": 1, "gpus_max": 2**32 - 1}, "gpus", "at most 1,000,000 GPUs"),
        ({"pruner": PrunerSpec("asha", min_resource=10**12)}, "pruner.min_resource", "at most"),
        ({"params": (FloatParam("lr", -1e308, 1e308),)}, "params.lr.low", "within +-1e15"),
        ({"params": (IntParam("lr", 0, 10**30),)}, "params.lr.high", "within +-1e15"),
        ({"params": (CategoricalParam("lr", tuple(range(1001))),)}, "params.lr.choices", "1,001"),
        ({"params": (CategoricalParam("lr", ("x" * 2000,)),)}, "params.lr.choices", "1,024"),
        (
            {"params": tuple(FloatParam(f"p{i}", 0, 1) for i in range(65))},
            "params",
            "65 parameters, at most 64",
        ),
        ({"command": ("x", "a\0b")}, "command[1]", "NUL"),
        ({"command": ("x",) * 2000}, "command", "2,000 arguments"),
        ({"env": {"A": "x" * 40_000}}, "env[A]", "at most 32,768"),
        ({"name": "n" * 300}, "name", "at most 256"),
    ],
)
def test_problems_bound_every_number_and_size(
    change: dict[str, object], field: str, words: str
) -> None:
    found = problems(_spec(**change))
    assert any(f == field and words in why for f, why in found), found


def test_a_grid_of_a_tiny_step_over_a_huge_range_is_counted_not_built() -> None:
    # (high - low) / step overflows to inf: it is far too many points, not a crash.
    huge = FloatParam("lr", -1e308, 1e308, step=1e-300)
    found = problems(_spec(sampler="grid", params=(huge,), max_trials=0))
    assert any(f == "params.lr" and "on a grid (at most 100,000)" in why for f, why in found)


def test_a_valid_spec_has_no_problems_and_grid_zero_means_the_whole_grid() -> None:
    assert problems(_spec()) == []
    grid = _spec(
        sampler="grid",
        max_trials=0,
        command=("x", "{a}", "{b}"),
        params=(IntParam("a", 1, 3), FloatParam("b", 0.0, 1.0, step=0.5)),
    )
    assert problems(grid) == []
    assert grid_size(grid.params) == 9 and grid.goal() == 9


def test_command_placeholders_and_literal_braces() -> None:
    argv = fill_command(("run", "--lr={lr}", "{{x}}", "t{trial}"), {"lr": 0.01, "trial": 3})
    assert argv == ["run", "--lr=0.01", "{x}", "t3"]


def test_spec_round_trips_through_protobuf_and_json() -> None:
    spec = _spec(
        params=(
            FloatParam("lr", 1e-4, 1e-1, log=True),
            IntParam("w", 8, 64, step=8),
            CategoricalParam("bs", (16, "x", 0.5, True)),
        ),
        pruner=PrunerSpec("hyperband", min_resource=2, max_resource=20, reduction_factor=3),
        seed=5,
        gpus_min=1,
        gpus_max=4,
        env={"A": "1"},
        direction="maximize",
        sampler="random",
    )
    assert spec_from_pb(spec_to_pb(spec)) == spec
    assert spec_from_json(spec_to_json(spec)) == spec


def test_the_example_file_loads(tmp_path: Path) -> None:
    spec = load_experiment_file(ROOT / "examples" / "hpo" / "search.yaml", user="me")
    assert spec.consumer == "/default" and spec.user == "me"
    assert [p.name for p in spec.params] == ["lr", "width", "batch_size"]
    assert spec.params[0] == FloatParam("lr", 1e-4, 0.3, log=True)
    assert spec.params[2] == CategoricalParam("batch_size", (16, 32, 64, 128))
    assert spec.pruner.kind == "asha" and spec.sampler == "tpe" and spec.seed == 1
    assert spec.working_dir == str(ROOT / "examples" / "hpo")


BAD = """\
name: bad
consumer: /team
command: [python, t.py, "{lr}", "{oops}"]
params:
  lr: {type: float, low: 0.1, high: 0.01}
  w: {type: int, low: 1, high: 8, stepp: 2}
  c: {type: categorical}
objective: {metric: loss, direction: sideways}
max_trials: 10
max_parallel: 0
gpus: two
"""


def test_file_errors_name_file_line_and_key() -> None:
    with pytest.raises(ExperimentFileError) as e:
        load_experiment(BAD, "exp.yaml")
    text = str(e.value)
    assert text.startswith("experiment file exp.yaml has")
    for expected in [
        "exp.yaml:6: params.w.stepp: unknown key 'stepp'; did you mean 'step'?",
        "exp.yaml:7: params.c.choices: missing",
        "exp.yaml:11: gpus: give N, or MIN:MAX",
    ]:
        assert expected in text, text


def test_file_errors_from_cross_field_rules_point_at_their_line() -> None:
    fixed = BAD.replace(", stepp: 2", "").replace("two", "1")
    fixed = fixed.replace("{type: categorical}", "{type: categorical, choices: [a, b]}")
    with pytest.raises(ExperimentFileError) as e:
        load_experiment(fixed, "exp.yaml")
    text = str(e.value)
    for expected in [
        "exp.yaml:3: command[3]: unknown placeholder {oops}",
        "exp.yaml:5: params.lr.high: must be above low (0.1), got 0.01",
        "exp.yaml:8: objective.direction: 'sideways': use minimize or maximize",
        "exp.yaml:10: max_parallel: must be at least 1, got 0",
    ]:
        assert expected in text, text


def test_file_syntax_errors_and_repeated_keys() -> None:
    with pytest.raises(ExperimentFileError, match=r"x.yaml:2: YAML syntax error"):
        load_experiment("a: [1\nb: 2\n", "x.yaml")
    with pytest.raises(ExperimentFileError, match=r"x.yaml:2: consumer: duplicate key"):
        load_experiment("consumer: /a\nconsumer: /b\n", "x.yaml")
    with pytest.raises(ExperimentFileError, match=r"x.yaml:1: the file is empty"):
        load_experiment("", "x.yaml")
