"""The experiment controller's restart rules on a real store and a real Optuna
database (docs/hpo.md, Durability): a trial Optuna asked for but whose job was
never recorded gets its job at the next start, with the same number and
parameters; a result in the store that Optuna was not told is told."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import optuna

from schedulerd.daemon.experiments import ExperimentController
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.state import ClusterState
from schedulerd.hpo.spec import ExperimentSpec, FloatParam
from schedulerd.policy import load_policy
from schedulerd.store import JobState, Store
from schedulerd.store.experiments import ExperimentState, TrialState

POLICY = "version: 1\nconsumers:\n  team: {share: 1}\n"
SPEC = ExperimentSpec(
    name="r",
    consumer="/team",
    user="u",
    command=("python", "t.py", "{x}"),
    params=(FloatParam("x", 0.0, 1.0),),
    sampler="random",
    seed=1,
    max_trials=6,
    max_parallel=2,
)


def _controller(tmp_path: Path) -> tuple[Store, ClusterState, ExperimentController]:
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, time.time)
    state.load()
    state.set_policy(load_policy(POLICY), store.save_policy(POLICY, "test", time.time()))
    links = AgentLinks()
    ctl = ExperimentController(
        state, links, SchedulingLoop(state, links), tmp_path / "s.db.optuna.sqlite", "h:1"
    )
    return store, state, ctl


def test_restart_submits_asked_trials_and_tells_untold_results(tmp_path: Path) -> None:
    async def before_crash() -> tuple[int, dict[str, float]]:
        store, state, ctl = _controller(tmp_path)
        await ctl.start()
        exp = await ctl.create(SPEC)
        assert sorted(ctl.trials[exp.id]) == [0, 1]  # max_parallel trials, as jobs
        assert {t.job_id for t in ctl.trials[exp.id].values()} == set(state.jobs)
        book = await ctl.book()
        # Killed right after Optuna's ask for trial 2, before its job was recorded...
        number, params = book.ask(exp.id, SPEC)
        assert number == 2
        # ...and after trial 0's result was committed, before Optuna was told.
        t0 = ctl.trials[exp.id][0]
        t0.state, t0.value, t0.reason = TrialState.COMPLETE, 1.5, "loss = 1.5"
        ctl.store.save_trial(t0)
        store.close()
        return exp.id, params

    exp_id, asked = asyncio.run(before_crash())

    async def after_restart() -> None:
        store, state, ctl = _controller(tmp_path)
        await ctl.start()
        trials = ctl.trials[exp_id]
        assert sorted(trials) == [0, 1, 2]
        assert trials[2].params == asked  # the same parameters, no new ask
        job = state.jobs[trials[2].job_id]
        assert job.command == ["python", "t.py", str(asked["x"])]
        assert job.env["SCHEDULERD_TRIAL"] == "2" and job.state is JobState.PENDING
        # Trial 0's job had not ended: a finished trial's job is cancelled at start.
        assert trials[0].job_id not in state.jobs
        study = optuna.load_study(
            study_name=f"experiment-{exp_id}", storage=f"sqlite:///{tmp_path}/s.db.optuna.sqlite"
        )
        states = {t.number: (t.state, t.value) for t in study.trials}
        assert states[0] == (optuna.trial.TrialState.COMPLETE, 1.5)
        assert len(study.trials) == 3  # nothing asked twice
        store.close()

    asyncio.run(after_restart())


def test_a_trial_asked_with_only_some_parameters_fails_at_restart(tmp_path: Path) -> None:
    """Optuna writes a trial's parameters one at a time: a crash midway must not
    start a job with half of them, nor keep the daemon from starting."""
    two = ExperimentSpec(
        name="r2",
        consumer="/team",
        user="u",
        command=("python", "t.py", "{x}", "{y}"),
        params=(FloatParam("x", 0.0, 1.0), FloatParam("y", 0.0, 1.0)),
        sampler="random",
        seed=1,
        max_trials=4,
        max_parallel=1,
    )

    async def before_crash() -> int:
        store, _, ctl = _controller(tmp_path)
        await ctl.start()
        exp = await ctl.create(two)
        book = await ctl.book()
        # Killed after Optuna stored x of a new trial, before y.
        trial = book._studies[exp.id].ask()
        trial.suggest_float("x", 0.0, 1.0)
        store.close()
        return exp.id

    exp_id = asyncio.run(before_crash())

    async def after_restart() -> None:
        store, state, ctl = _controller(tmp_path)
        await ctl.start()
        assert sorted(ctl.trials[exp_id]) == [0]  # no job for the half-asked trial
        study = optuna.load_study(
            study_name=f"experiment-{exp_id}", storage=f"sqlite:///{tmp_path}/s.db.optuna.sqlite"
        )
        assert study.trials[1].state is optuna.trial.TrialState.FAIL
        assert all(len(job.command) == 4 for job in state.jobs.values())
        store.close()

    asyncio.run(after_restart())


def test_a_stop_killed_before_its_cancels_cancels_them_at_restart(tmp_path: Path) -> None:
    """StopExperiment commits the trials' end, then cancels their jobs and tells
    Optuna: killed in between, the next start does both."""

    async def before_crash() -> tuple[int, list[int]]:
        store, _, ctl = _controller(tmp_path)
        await ctl.start()
        exp = await ctl.create(SPEC)
        active = list(ctl.trials[exp.id].values())
        assert len(active) == 2
        # The commit of stop(), and nothing after it.
        for t in active:
            t.state, t.reason = TrialState.STOPPED, "experiment stopped by u"
        exp.state = ExperimentState.STOPPED
        ctl.store.save_trials(active, exp)
        store.close()
        return exp.id, [t.job_id for t in active]

    exp_id, jobs = asyncio.run(before_crash())

    async def after_restart() -> None:
        store, state, ctl = _controller(tmp_path)
        assert all(j in state.jobs for j in jobs)  # still queued
        await ctl.start()
        for j in jobs:
            assert j not in state.jobs
            ended = store.load_job(j)
            assert ended is not None and ended.state is JobState.CANCELLED
        study = optuna.load_study(
            study_name=f"experiment-{exp_id}", storage=f"sqlite:///{tmp_path}/s.db.optuna.sqlite"
        )
        assert all(t.state is not optuna.trial.TrialState.RUNNING for t in study.trials)
        store.close()

    asyncio.run(after_restart())
