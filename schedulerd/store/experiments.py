"""Experiments and their trials in the store (migration 3). Each write is one
transaction of the daemon's Store; a trial's row goes in with its job's row
(ExperimentController submits both in one transaction)."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from schedulerd.hpo.codec import spec_from_json, spec_to_json
from schedulerd.hpo.spec import ExperimentSpec
from schedulerd.store.store import Store


class ExperimentState(enum.Enum):
    RUNNING = "RUNNING"
    DONE = "DONE"
    STOPPED = "STOPPED"


class TrialState(enum.Enum):
    ACTIVE = "ACTIVE"  # its job waits or runs (the job's state says which)
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def ended(self) -> bool:
        return self is not TrialState.ACTIVE


@dataclass
class ExperimentRecord:
    id: int
    spec: ExperimentSpec
    state: ExperimentState
    created: float
    reason: str = ""
    ended: float | None = None
    vouched: bool = False  # created with a node-vouched credential: its trials too

    @property
    def study_name(self) -> str:
        return f"experiment-{self.id}"


@dataclass
class TrialRecord:
    experiment_id: int
    number: int
    job_id: int
    state: TrialState
    params: dict[str, Any]
    created: float
    value: float | None = None
    last_step: int | None = None
    last_value: float | None = None
    reason: str = ""
    ended: float | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # loaded on demand


class ExperimentStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def insert_experiment(self, exp: ExperimentRecord) -> ExperimentRecord:
        row = {
            "name": exp.spec.name,
            "consumer": exp.spec.consumer,
            "user": exp.spec.user,
            "spec": spec_to_json(exp.spec),
            "state": exp.state.value,
            "reason": exp.reason,
            "created": exp.created,
            "ended": exp.ended,
            "vouched": int(exp.vouched),
        }
        with self.store.transaction():
            pk = self.db.table("experiments").insert(row).last_pk
        assert isinstance(pk, int)
        exp.id = pk
        return exp

    def save_experiment(self, exp: ExperimentRecord) -> None:
        with self.store.transaction():
            self.db.table("experiments").update(
                exp.id, {"state": exp.state.value, "reason": exp.reason, "ended": exp.ended}
            )

    def load_experiments(self, running_only: bool = False) -> list[ExperimentRecord]:
        where = "state = 'RUNNING'" if running_only else None
        return [
            _experiment_from_row(r)
            for r in self.db.table("experiments").rows_where(where, order_by="id")
        ]

    def load_experiment(self, exp_id: int) -> ExperimentRecord | None:
        rows = list(self.db.table("experiments").rows_where("id = ?", [exp_id]))
        return _experiment_from_row(rows[0]) if rows else None

    def insert_trial(self, trial: TrialRecord) -> None:
        with self.store.transaction():
            self.db.table("trials").insert(_trial_row(trial))

    def save_trial(self, trial: TrialRecord) -> None:
        with self.store.transaction():
            self.db.table("trials").update((trial.experiment_id, trial.number), _trial_row(trial))

    def save_trials(self, trials: list[TrialRecord], exp: ExperimentRecord | None = None) -> None:
        """Several trials (and their experiment) in one transaction."""
        with self.store.transaction():
            for t in trials:
                self.save_trial(t)
            if exp is not None:
                self.save_experiment(exp)

    def add_value(self, trial: TrialRecord, step: int, value: float) -> None:
        """An intermediate report, and the trial's last one, in one transaction.
        A step reported again (a trial restarted after preemption) replaces the old."""
        trial.last_step, trial.last_value = step, value
        with self.store.transaction():
            self.db.table("trial_values").upsert(
                {
                    "experiment_id": trial.experiment_id,
                    "number": trial.number,
                    "step": step,
                    "value": value,
                },
                pk=("experiment_id", "number", "step"),
            )
            self.save_trial(trial)

    def trial_of_job(self, job_id: int) -> TrialRecord | None:
        rows = list(self.db.table("trials").rows_where("job_id = ?", [job_id]))
        return _trial_from_row(rows[0]) if rows else None

    def load_trials(self, exp_id: int) -> list[TrialRecord]:
        rows = self.db.table("trials").rows_where("experiment_id = ?", [exp_id], order_by="number")
        return [_trial_from_row(r) for r in rows]

    def load_history(self, exp_id: int) -> dict[int, list[tuple[int, float]]]:
        history: dict[int, list[tuple[int, float]]] = {}
        for r in self.db.table("trial_values").rows_where(
            "experiment_id = ?", [exp_id], order_by="number, step"
        ):
            history.setdefault(r["number"], []).append((r["step"], r["value"]))
        return history


def _experiment_from_row(r: dict[str, Any]) -> ExperimentRecord:
    return ExperimentRecord(
        id=r["id"],
        spec=spec_from_json(r["spec"]),
        state=ExperimentState(r["state"]),
        created=r["created"],
        reason=r["reason"],
        ended=r["ended"],
        vouched=bool(r["vouched"]),
    )


def _trial_row(t: TrialRecord) -> dict[str, Any]:
    row = asdict(t)
    del row["history"]
    row["state"] = t.state.value
    row["params"] = json.dumps(t.params)
    return row


def _trial_from_row(r: dict[str, Any]) -> TrialRecord:
    r = dict(r)
    r["state"] = TrialState(r["state"])
    r["params"] = json.loads(r["params"])
    return TrialRecord(**r)
