"""The experiment controller: keeps each running experiment's trials topped up
(at most max_parallel unfinished, max_trials in all), turns the trials' reports
into Optuna reports and tells, and stops pruned trials' jobs.

Trials are ordinary jobs of the experiment's consumer, submitted through
`ClusterState.submit` (the same checks and transaction as SubmitJob), so the
scheduling loop alone decides when they run (SEMANTICS: fair share, reclaim).

Durability (docs/hpo.md): the daemon's store is the word on which job is which
trial and on every result; Optuna's database is brought in line with it when an
experiment is loaded. Order of writes: Optuna asks first, then the job and the
trial row go in one transaction (a crash between leaves an Optuna trial with no
job: it gets its job at the next start, with the same number and parameters);
a result is committed to the store before Optuna is told (a crash between is
told again at the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.state import ClusterState, SubmitError
from schedulerd.daemon.wake import woken
from schedulerd.hpo.spec import ExperimentSpec, fill_command, problems
from schedulerd.store import JobRecord, JobState
from schedulerd.store.experiments import (
    ExperimentRecord,
    ExperimentState,
    ExperimentStore,
    TrialRecord,
    TrialState,
)

if TYPE_CHECKING:
    from schedulerd.daemon.experiments.study import StudyBook

log = logging.getLogger("schedulerd.experiments")


class NotFound(LookupError):
    pass


class ReportRefused(ValueError):
    pass


class ExperimentController:
    def __init__(
        self,
        state: ClusterState,
        links: AgentLinks,
        loop: SchedulingLoop,
        optuna_path: Path,
        address: str,
        tick_s: float = 1.0,
        trial_token: Callable[[str], str] | None = None,
    ) -> None:
        self.state = state
        self.links = links
        self.loop = loop
        self.optuna_path = optuna_path
        self.address = address  # where trials reach the daemon (SCHEDULERD_ADDRESS)
        self.tick_s = tick_s
        # user -> a token its trials report with (scope "experiments"): a trial on
        # another node has no loopback uid to be known by.
        self.trial_token = trial_token
        self._tokens: dict[str, str] = {}
        self.store = ExperimentStore(state.store)
        self.running: dict[int, ExperimentRecord] = {}
        self.trials: dict[int, dict[int, TrialRecord]] = {}  # running experiments only
        self.by_job: dict[int, tuple[int, int]] = {}  # live job id -> (experiment, trial)
        self.watchers: list[Callable[[int], None]] = []
        self._book: StudyBook | None = None
        self._lock = asyncio.Lock()  # one Optuna call at a time, and one change at a time
        self._wake = asyncio.Event()
        self._ended: list[int] = []
        state.listeners.append(self._on_job)

    # -- startup ------------------------------------------------------------

    async def start(self) -> None:
        """Load running experiments and set Optuna right after a restart."""
        for exp in self.store.load_experiments(running_only=True):
            self.running[exp.id] = exp
            self.trials[exp.id] = {t.number: t for t in self.store.load_trials(exp.id)}
            for t in self.trials[exp.id].values():
                if not t.state.ended or t.job_id in self.state.jobs:
                    self.by_job[t.job_id] = (exp.id, t.number)
        await self._cancel_leftovers()
        if self.running:
            async with self._lock:
                for exp in list(self.running.values()):
                    try:
                        await self._reconcile(exp)
                    except Exception:  # one broken experiment must not keep the daemon down
                        log.exception("experiment %d: could not be set right at start", exp.id)

    async def _cancel_leftovers(self) -> None:
        """Jobs of ended trials of experiments that are over. A stop commits the
        trials' end, then cancels their jobs and tells Optuna: killed in between,
        the jobs are still queued or running, and nothing else would stop them."""
        left: dict[int, list[TrialRecord]] = {}
        for job in list(self.state.jobs.values()):
            if job.id in self.by_job or job.cancel_requested:
                continue
            trial = self.store.trial_of_job(job.id)
            if trial is not None and trial.state.ended:
                self._cancel(job, trial.reason or "its experiment is over")
                left.setdefault(trial.experiment_id, []).append(trial)
        for exp_id, trials in left.items():
            exp = self.store.load_experiment(exp_id)
            if exp is None:
                continue
            try:
                async with self._lock:
                    book = await self.book()
                    await asyncio.to_thread(book.open, exp.id, exp.study_name, exp.spec)
                    for t in trials:
                        await asyncio.to_thread(book.tell, exp.id, t.number, t.state.value, None)
            except Exception:  # the jobs are cancelled; Optuna's record can wait
                log.exception("experiment %d: could not tell Optuna of stopped trials", exp_id)

    async def _reconcile(self, exp: ExperimentRecord) -> None:
        book = await self.book()
        frozen = await asyncio.to_thread(book.open, exp.id, exp.study_name, exp.spec)
        trials = self.trials[exp.id]
        for ft in frozen:
            ours = trials.get(ft.number)
            if ours is None:
                if ft.state.name != "RUNNING":
                    continue
                if set(ft.params) == {p.name for p in exp.spec.params}:
                    # Asked, then the daemon died before the job: it gets its job now.
                    log.info("experiment %d: trial %d gets its job now", exp.id, ft.number)
                    self._submit_trial(exp, ft.number, dict(ft.params))
                else:
                    # Optuna writes a trial's parameters one by one: a crash (or a
                    # sampler error) midway leaves a trial without all of them.
                    log.warning(
                        "experiment %d: trial %d was asked but has only parameters %s; failed",
                        exp.id,
                        ft.number,
                        sorted(ft.params),
                    )
                    await asyncio.to_thread(
                        book.tell, exp.id, ft.number, TrialState.FAILED.value, None
                    )
                continue
            if ours.state.ended and ft.state.name == "RUNNING":
                await asyncio.to_thread(
                    book.tell, exp.id, ours.number, ours.state.value, ours.value
                )
        for t in list(trials.values()):
            job = self.state.jobs.get(t.job_id) or self.state.store.load_job(t.job_id)
            if job is None:
                continue
            if job.state.ended:
                self.by_job.pop(job.id, None)
            if not t.state.ended and job.state.ended:  # ended while the daemon was down
                await self._job_ended(exp, t, job)
            elif t.state.ended and not job.state.ended and not job.cancel_requested:
                self._cancel(job, t.reason)  # pruned or stopped; the cancel was lost

    async def book(self) -> StudyBook:
        # Optuna takes about a second to import: only daemons with experiments pay it,
        # and off the event loop.
        if self._book is None:
            self._book = await asyncio.to_thread(_make_book, self.optuna_path)
        return self._book

    # -- the task -----------------------------------------------------------

    async def run(self) -> None:
        while True:
            await woken(self._wake, self.tick_s)
            self._wake.clear()
            try:
                async with self._lock:
                    await self._step()
            except Exception:  # a bad step must not end the controller; the next retries
                log.exception("experiment step failed")

    def wake(self) -> None:
        self._wake.set()

    def _on_job(self, job: JobRecord) -> None:
        where = self.by_job.get(job.id)
        if where is None:
            return
        if job.state.ended:
            self._ended.append(job.id)
            self.wake()
        self._notify(where[0])

    async def _step(self) -> None:
        ended, self._ended = self._ended, []
        for job_id in ended:
            where = self.by_job.pop(job_id, None)
            if where is None or where[0] not in self.running:
                continue
            trial = self.trials[where[0]][where[1]]
            job = self.state.store.load_job(job_id)
            if job is not None and not trial.state.ended:
                await self._job_ended(self.running[where[0]], trial, job)
        for exp in list(self.running.values()):
            try:
                await self._top_up(exp)
            except Exception:  # the others still get their trials
                log.exception("experiment %d: could not ask for more trials", exp.id)

    async def _top_up(self, exp: ExperimentRecord) -> None:
        trials = self.trials[exp.id]
        goal = exp.spec.goal()
        book = await self.book()
        if not book.is_open(exp.id):
            await asyncio.to_thread(book.open, exp.id, exp.study_name, exp.spec)
        while exp.state is ExperimentState.RUNNING and len(trials) < goal:
            if self.unfinished(exp.id) >= exp.spec.max_parallel:
                return
            number, params = await asyncio.to_thread(book.ask, exp.id, exp.spec)
            self._submit_trial(exp, number, params)
        if exp.state is ExperimentState.RUNNING and self.unfinished(exp.id) == 0:
            counts = _count(trials.values())
            summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
            self._end(exp, ExperimentState.DONE, f"{len(trials)} trials: {summary}")

    def unfinished(self, exp_id: int) -> int:
        """Trials that wait or run: a pruned trial counts until its job has exited
        (its GPUs are not free before)."""
        return sum(
            1
            for t in self.trials[exp_id].values()
            if not t.state.ended or t.job_id in self.state.jobs
        )

    def _submit_trial(self, exp: ExperimentRecord, number: int, params: dict[str, Any]) -> None:
        spec = exp.spec
        values = {**params, "trial": number, "experiment": exp.id}
        env = {
            **spec.env,
            "SCHEDULERD_ADDRESS": self.address,
            "SCHEDULERD_EXPERIMENT_ID": str(exp.id),
            "SCHEDULERD_TRIAL": str(number),
            "SCHEDULERD_HPO_PARAMS": json.dumps(params),
            "SCHEDULERD_HPO_METRIC": spec.metric,
        }
        if self.trial_token is not None:
            if spec.user not in self._tokens:
                self._tokens[spec.user] = self.trial_token(spec.user)
            env["SCHEDULERD_TOKEN"] = self._tokens[spec.user]
        job = JobRecord(
            id=0,
            consumer=spec.consumer,
            user=spec.user,
            vouched=exp.vouched,
            name=f"{spec.name or f'experiment-{exp.id}'} trial {number}",
            command=fill_command(spec.command, values),
            env=env,
            working_dir=spec.working_dir,
            gpus_min=spec.gpus_min,
            gpus_max=spec.gpus_max,
            priority=spec.priority,
            state=JobState.PENDING,
            submit_time=0.0,
        )
        now = self.state.clock()
        trial = TrialRecord(exp.id, number, 0, TrialState.ACTIVE, params, now)

        def record(j: JobRecord) -> None:
            trial.job_id = j.id
            self.store.insert_trial(trial)

        try:
            self.state.submit(job, also=record)
        except SubmitError as e:
            # The consumer or the cluster changed since the experiment was created:
            # asking again would be refused again. Stop it and its other trials, and
            # say why; Optuna is told once the caller lets go of the lock.
            stopped = self._stop_trials(exp, f"trial {number} refused: {e}")
            asyncio.get_running_loop().create_task(self._tell_stopped(exp, stopped))
            self._notify(exp.id)
            return
        self.trials[exp.id][number] = trial
        self.by_job[job.id] = (exp.id, number)
        log.info("experiment %d: trial %d is job %d %s", exp.id, number, job.id, params)
        self.loop.wake()
        self._notify(exp.id)

    async def _job_ended(self, exp: ExperimentRecord, trial: TrialRecord, job: JobRecord) -> None:
        """The job of an active trial ended without a final value: the trial failed."""
        if job.state is JobState.SUCCEEDED:
            why = "its job exited with 0 without reporting a final value (schedulerd.hpo.final)"
        else:
            why = f"its job ended {job.state.value.lower()}: {job.reason}"
        await self._finish_trial(exp, trial, TrialState.FAILED, None, why)

    async def _finish_trial(
        self,
        exp: ExperimentRecord,
        trial: TrialRecord,
        state: TrialState,
        value: float | None,
        reason: str,
    ) -> None:
        trial.state, trial.value, trial.reason = state, value, reason
        trial.ended = self.state.clock()
        self.store.save_trial(trial)  # the store first: a crash before the tell is told again
        book = await self.book()
        await asyncio.to_thread(book.tell, exp.id, trial.number, state.value, value)
        log.info("experiment %d: trial %d %s: %s", exp.id, trial.number, state.value, reason)
        self.wake()
        self._notify(exp.id)

    def _cancel(self, job: JobRecord, reason: str) -> None:
        with contextlib.suppress(KeyError):
            _, stops = self.state.cancel(job.id, reason)
            self.links.send_all(stops)
            self.loop.wake()

    def _stop_trials(self, exp: ExperimentRecord, why: str) -> list[TrialRecord]:
        """End the experiment as STOPPED with its unfinished trials, in one
        transaction, then cancel their jobs; the trials for Optuna to be told."""
        active = [t for t in self.trials[exp.id].values() if not t.state.ended]
        now = self.state.clock()
        for t in active:
            t.state, t.reason, t.ended = TrialState.STOPPED, why, now
        exp.state, exp.reason, exp.ended = ExperimentState.STOPPED, why, now
        self.store.save_trials(active, exp)
        self.running.pop(exp.id, None)
        for t in active:
            job = self.state.jobs.get(t.job_id)
            if job is not None:
                self._cancel(job, why)
        return active

    async def _tell_stopped(self, exp: ExperimentRecord, trials: list[TrialRecord]) -> None:
        try:
            async with self._lock:
                book = await self.book()
                for t in trials:
                    await asyncio.to_thread(book.tell, exp.id, t.number, t.state.value, None)
        except Exception:  # the store has the trials' end; Optuna's copy can lag
            log.exception("experiment %d: could not tell Optuna of stopped trials", exp.id)

    def _end(self, exp: ExperimentRecord, state: ExperimentState, reason: str) -> None:
        exp.state, exp.reason, exp.ended = state, reason, self.state.clock()
        self.store.save_experiment(exp)
        self.running.pop(exp.id, None)
        log.info("experiment %d %s: %s", exp.id, state.value.lower(), reason)
        self._notify(exp.id)

    def _notify(self, exp_id: int) -> None:
        for watcher in list(self.watchers):
            watcher(exp_id)

    # -- requests -----------------------------------------------------------

    def check(self, spec: ExperimentSpec) -> list[tuple[str, str]]:
        """Every problem of a new experiment: the spec's own, then whether its
        trials could be queued at all (the submit path's own check)."""
        found = problems(spec)
        if not any(f in ("consumer", "user", "gpus") for f, _ in found):
            got = self.state.submission_problem(
                spec.consumer, spec.user, spec.gpus_min, spec.gpus_max
            )
            if got is not None:
                found.append(got)
        return found

    async def create(self, spec: ExperimentSpec, vouched: bool = False) -> ExperimentRecord:
        """`vouched`: created with a node's word for its user: its trials never run as
        root (docs/security.md)."""
        exp = ExperimentRecord(
            0, spec, ExperimentState.RUNNING, self.state.clock(), vouched=vouched
        )
        async with self._lock:
            self.store.insert_experiment(exp)
            self.running[exp.id] = exp
            self.trials[exp.id] = {}
            book = await self.book()
            await asyncio.to_thread(book.open, exp.id, exp.study_name, spec)
            await self._top_up(exp)
        return exp

    async def stop(self, exp_id: int, user: str) -> ExperimentRecord:
        async with self._lock:
            exp = self.running.get(exp_id)
            if exp is None:
                found = self.store.load_experiment(exp_id)
                if found is None:
                    raise NotFound(f"no experiment {exp_id}")
                return found  # already over
            why = f"experiment stopped by {user}" if user else "experiment stopped"
            active = self._stop_trials(exp, why)
            book = await self.book()
            for t in active:
                await asyncio.to_thread(book.tell, exp_id, t.number, t.state.value, None)
            self._notify(exp_id)
            return exp

    async def report(
        self, exp_id: int, number: int, job_id: int, step: int, value: float, final: bool
    ) -> tuple[bool, TrialState, str]:
        """A trial's report: (should it stop, its state, a message for the script)."""
        async with self._lock:
            exp, trial = self._find(exp_id, number)
            # Every trial's job has SCHEDULERD_JOB_ID (the agent sets it): a report
            # without it, or from another job, is not this trial's.
            if trial.job_id != job_id:
                raise ReportRefused(
                    f"trial {number} of experiment {exp_id} is job {trial.job_id}, not {job_id}"
                )
            if trial.state.ended:
                if final and trial.state is TrialState.COMPLETE and trial.value == value:
                    return False, trial.state, "final value already recorded"  # a retry
                stop = trial.state is not TrialState.COMPLETE
                return stop, trial.state, f"trial {number} is already {trial.state.value}"
            if final:
                if not math.isfinite(value):
                    why = f"the final value is {value}"
                    await self._finish_trial(exp, trial, TrialState.FAILED, None, why)
                    return True, trial.state, why
                why = f"{exp.spec.metric} = {value:g}"
                await self._finish_trial(exp, trial, TrialState.COMPLETE, value, why)
                return False, trial.state, "final value recorded"
            if not math.isfinite(value):
                raise ReportRefused(f"value {value} at step {step} is not a finite number")
            book = await self.book()
            prune = await asyncio.to_thread(book.report, exp_id, number, step, value)
            self.store.add_value(trial, step, value)
            self._notify(exp_id)
            if not prune:
                return False, trial.state, "go on"
            why = f"pruned at step {step} ({exp.spec.metric} = {value:g})"
            await self._finish_trial(exp, trial, TrialState.PRUNED, value, why)
            job = self.state.jobs.get(trial.job_id)
            if job is not None:
                self._cancel(job, f"experiment {exp_id}: trial {number} {why}")
            return True, trial.state, why

    def _find(self, exp_id: int, number: int) -> tuple[ExperimentRecord, TrialRecord]:
        exp = self.running.get(exp_id)
        if exp is not None:
            trial = self.trials[exp_id].get(number)
        else:
            exp = self.store.load_experiment(exp_id)
            found = [t for t in self.store.load_trials(exp_id) if t.number == number] if exp else []
            trial = found[0] if found else None
        if exp is None or trial is None:
            raise NotFound(f"no trial {number} in experiment {exp_id}")
        return exp, trial

    # -- reading ------------------------------------------------------------

    def get(self, exp_id: int) -> tuple[ExperimentRecord, list[TrialRecord]] | None:
        exp = self.running.get(exp_id)
        if exp is not None:
            return exp, sorted(self.trials[exp_id].values(), key=lambda t: t.number)
        exp = self.store.load_experiment(exp_id)
        if exp is None:
            return None
        return exp, self.store.load_trials(exp_id)

    def list(self) -> list[tuple[ExperimentRecord, list[TrialRecord]]]:
        out = []
        for exp in self.store.load_experiments():
            live = self.running.get(exp.id)
            if live is not None:
                out.append((live, list(self.trials[exp.id].values())))
            else:
                out.append((exp, self.store.load_trials(exp.id)))
        return out


def _make_book(path: Path) -> StudyBook:
    from schedulerd.daemon.experiments.study import StudyBook

    path.touch(mode=0o600, exist_ok=True)  # experiments' params and values: the owner's
    path.chmod(0o600)
    return StudyBook(path)


def _count(trials: Any) -> dict[str, int]:
    counts = {s.value: 0 for s in TrialState if s.ended}
    for t in trials:
        if t.state.ended:
            counts[t.state.value] += 1
    return counts
