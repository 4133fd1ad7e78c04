"""Optuna behind a small, blocking interface: one study per experiment on one
RDBStorage (a SQLite file beside the daemon's database; FIELD-NOTES: give
Optuna its own file). Every method blocks on SQLite: the controller calls them
through `asyncio.to_thread`, one at a time (Optuna's SQLite writes would only
fight each other for the lock).

Ask/tell: the daemon asks Optuna for a trial's parameters, and tells it the
outcome that the trial's job reports; Optuna never runs anything itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from schedulerd.hpo.spec import (
    ExperimentSpec,
    FloatParam,
    IntParam,
    Param,
    grid_values,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the daemon logs trial ends itself
log = logging.getLogger("schedulerd.experiments")

# Our end states in Optuna's words. STOPPED (the experiment was stopped) is a
# FAIL to Optuna: the trial has no value and must not count as pruned.
OPTUNA_STATES = {
    "COMPLETE": TrialState.COMPLETE,
    "PRUNED": TrialState.PRUNED,
    "FAILED": TrialState.FAIL,
    "STOPPED": TrialState.FAIL,
}


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler calls `study.stop()` when the grid is used up,
    which raises outside `study.optimize`; the daemon stops asking at the
    experiment's goal (at most the grid's size) by itself."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def distributions(params: tuple[Param, ...]) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for p in params:
        if isinstance(p, FloatParam):
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[p.name] = IntDistribution(p.low, p.high, log=p.log, step=p.step or 1)
        else:
            out[p.name] = CategoricalDistribution(list(p.choices))
    return out


def _sampler(spec: ExperimentSpec, asked: int) -> optuna.samplers.BaseSampler:
    # A sampler restarted with its first seed would draw the same points again:
    # after a daemon restart it goes on from seed + trials asked so far.
    seed = None if spec.seed is None else spec.seed + asked
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        space = {p.name: grid_values(p) for p in spec.params}
        return _GridSampler(space, seed=seed)  # type: ignore[arg-type]
    startup = max(2, min(10, spec.goal() // 3))  # random first, then the model
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _pruner(spec: ExperimentSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps
        )
    if p.kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=p.max_resource or "auto",
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


class StudyBook:
    """The studies of all experiments, on one storage file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._storage: optuna.storages.RDBStorage | None = None
        self._studies: dict[int, optuna.Study] = {}

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        if self._storage is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._storage = optuna.storages.RDBStorage(
                f"sqlite:///{self.path}",
                # Wait for SQLite's lock rather than fail at once.
                engine_kwargs={"connect_args": {"timeout": 30}},
            )
        return self._storage

    def is_open(self, exp_id: int) -> bool:
        return exp_id in self._studies

    def open(self, exp_id: int, name: str, spec: ExperimentSpec) -> list[FrozenTrial]:
        """Create or re-open the study of an experiment; its trials so far."""
        existing = [s for s in self.storage.get_all_studies() if s.study_name == name]
        asked = 0
        if existing:
            asked = len(self.storage.get_all_trials(existing[0]._study_id, deepcopy=False))
        study = optuna.create_study(
            storage=self.storage,
            study_name=name,
            direction="maximize" if spec.direction == "maximize" else "minimize",
            sampler=_sampler(spec, asked),
            pruner=_pruner(spec),
            load_if_exists=True,
        )
        self._studies[exp_id] = study
        return study.get_trials(deepcopy=False)

    def ask(self, exp_id: int, spec: ExperimentSpec) -> tuple[int, dict[str, Any]]:
        trial = self._studies[exp_id].ask(distributions(spec.params))
        return trial.number, dict(trial.params)

    def report(self, exp_id: int, number: int, step: int, value: float) -> bool:
        """Record an intermediate value; whether the pruner stops the trial."""
        trial = self._trial(exp_id, number)
        trial.report(value, step)
        return trial.should_prune()

    def tell(self, exp_id: int, number: int, state: str, value: float | None) -> None:
        """The trial's end; nothing if Optuna already has one (a restart told it)."""
        study = self._studies[exp_id]
        optuna_state = OPTUNA_STATES[state]
        values = [value] if optuna_state is TrialState.COMPLETE and value is not None else None
        study.tell(number, values, state=optuna_state, skip_if_finished=True)

    def _trial(self, exp_id: int, number: int) -> optuna.Trial:
        study = self._studies[exp_id]
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return optuna.Trial(study, trial_id)
