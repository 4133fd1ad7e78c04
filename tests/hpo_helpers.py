"""Tiny trial scripts and specs for the experiment tests: no torch, seconds each."""

from __future__ import annotations

import sys
from pathlib import Path

from schedulerd.api.v1 import experiments_pb2
from schedulerd.hpo.codec import spec_to_pb
from schedulerd.hpo.spec import ExperimentSpec, FloatParam, IntParam, PrunerSpec

# A quadratic bowl in x with a noise-free "training curve": the value falls with
# each step toward (x - 0.3)^2, so better x are better at every step. Each
# process appends its pid to runs/<trial> to show whether a trial ran twice.
TRIAL_SCRIPT = """
import os, sys, time
from schedulerd import hpo

p = hpo.params()
steps, pause = int(sys.argv[1]), float(sys.argv[2])
runs = sys.argv[3] if len(sys.argv) > 3 else ""
if runs:
    with open(os.path.join(runs, os.environ["SCHEDULERD_TRIAL"]), "a") as f:
        f.write(f"{os.getpid()}\\n")
value = 0.0
for step in range(steps):
    value = (p["x"] - 0.3) ** 2 + p.get("k", 1) / (step + 1)
    if hpo.report(step, value) and os.environ.get("IGNORE_PRUNE") != "1":
        sys.exit(0)
    time.sleep(pause)
hpo.final(value)
"""


def trial_file(root: Path) -> Path:
    path = root / "trial.py"
    path.write_text(TRIAL_SCRIPT)
    return path


def spec(
    root: Path,
    consumer: str = "/team",
    *,
    trials: int = 12,
    parallel: int = 3,
    steps: int = 3,
    pause: float = 0.2,
    pruner: PrunerSpec | None = None,
    sampler: str = "random",
    runs: Path | None = None,
    env: dict[str, str] | None = None,
) -> experiments_pb2.ExperimentSpec:
    command = [sys.executable, str(trial_file(root)), str(steps), str(pause)]
    if runs is not None:
        command.append(str(runs))
    return spec_to_pb(
        ExperimentSpec(
            name="bowl",
            consumer=consumer,
            user="",  # the caller's own (root here: trials run as root)
            command=tuple(command),
            params=(FloatParam("x", 0.0, 1.0), IntParam("k", 1, 3)),
            metric="loss",
            sampler=sampler,
            seed=7,
            pruner=pruner or PrunerSpec(),
            max_trials=trials,
            max_parallel=parallel,
            env=env or {},
            working_dir=str(root),
        )
    )
