"""Experiment and trial records to the API's messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from schedulerd.api.v1 import experiments_pb2 as pb
from schedulerd.daemon.state import ClusterState
from schedulerd.hpo.codec import spec_to_pb, value_to_pb
from schedulerd.store import JobState
from schedulerd.store.experiments import (
    ExperimentRecord,
    ExperimentState,
    TrialRecord,
    TrialState,
)

_EXPERIMENT_STATES = {
    ExperimentState.RUNNING: pb.EXPERIMENT_RUNNING,
    ExperimentState.DONE: pb.EXPERIMENT_DONE,
    ExperimentState.STOPPED: pb.EXPERIMENT_STOPPED,
}
_TRIAL_STATES = {
    TrialState.COMPLETE: pb.TRIAL_COMPLETE,
    TrialState.PRUNED: pb.TRIAL_PRUNED,
    TrialState.FAILED: pb.TRIAL_FAILED,
    TrialState.STOPPED: pb.TRIAL_STOPPED,
}


def trial_state(trial: TrialRecord, state: ClusterState) -> pb.TrialState:
    if trial.state.ended:
        return _TRIAL_STATES[trial.state]
    job = state.jobs.get(trial.job_id)
    running = job is not None and job.state is JobState.RUNNING
    return pb.TRIAL_RUNNING if running else pb.TRIAL_WAITING


def trial_to_pb(trial: TrialRecord, state: ClusterState) -> pb.Trial:
    msg = pb.Trial(
        number=trial.number,
        job_id=trial.job_id,
        state=trial_state(trial, state),
        params={k: value_to_pb(v) for k, v in trial.params.items()},
        reason=trial.reason,
        created=_ts(trial.created),
        intermediate=[pb.IntermediateValue(step=s, value=v) for s, v in trial.history],
    )
    if trial.value is not None:
        msg.value = trial.value
    if trial.last_step is not None:
        msg.last_step = trial.last_step
    if trial.last_value is not None:
        msg.last_value = trial.last_value
    if trial.ended is not None:
        msg.ended.CopyFrom(_ts(trial.ended))
    return msg


def best(exp: ExperimentRecord, trials: list[TrialRecord]) -> TrialRecord | None:
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = -1.0 if exp.spec.direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def experiment_to_pb(
    exp: ExperimentRecord,
    trials: list[TrialRecord],
    state: ClusterState,
    with_trials: bool,
) -> pb.Experiment:
    states = [trial_state(t, state) for t in trials]
    msg = pb.Experiment(
        id=exp.id,
        spec=spec_to_pb(exp.spec),
        state=_EXPERIMENT_STATES[exp.state],
        reason=exp.reason,
        created=_ts(exp.created),
        trials_total=exp.spec.goal(),
        trials_finished=sum(1 for t in trials if t.state.ended),
        trials_waiting=states.count(pb.TRIAL_WAITING),
        trials_running=states.count(pb.TRIAL_RUNNING),
    )
    if exp.ended is not None:
        msg.ended.CopyFrom(_ts(exp.ended))
    top = best(exp, trials)
    if top is not None:
        msg.best.CopyFrom(trial_to_pb(top, state))
    if with_trials:
        msg.trials.extend(trial_to_pb(t, state) for t in trials)
    return msg


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
