"""End to end: experiments on a real daemon and agent (fake GPUs); trials are
tiny Python scripts that report through schedulerd.hpo (docs/hpo.md)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import optuna
import pytest
from harness import running_cluster, wait_for
from hpo_helpers import spec, trial_file

from schedulerd.api.v1 import experiments_pb2 as pb
from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import ClientError
from schedulerd.hpo.spec import PrunerSpec

POLICY = """
version: 1
consumers:
  team: {share: 1}
"""


def test_twelve_trials_three_at_a_time_finish_with_a_best_trial(tmp_path: Path) -> None:
    with running_cluster(tmp_path, POLICY, {"n1": 8}) as cluster:
        c = cluster.client
        exp = c.create_experiment(spec(tmp_path, trials=12, parallel=3))
        assert exp.state == pb.EXPERIMENT_RUNNING and exp.trials_total == 12
        most = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = c.get_experiment(exp.id)
            unfinished = sum(
                1 for t in now.trials if t.state in (pb.TRIAL_WAITING, pb.TRIAL_RUNNING)
            )
            jobs = c.list_jobs("/team", ["PENDING", "RUNNING", "PREEMPTED"])
            most = max(most, unfinished, len(jobs))
            if now.state != pb.EXPERIMENT_RUNNING:
                break
            time.sleep(0.1)
        assert now.state == pb.EXPERIMENT_DONE, now
        assert most <= 3, most
        assert most == 3  # 8 free GPUs: the limit is what held it back
        assert len(now.trials) == 12 and now.trials_finished == 12
        assert [t.number for t in now.trials] == list(range(12))
        assert all(t.state == pb.TRIAL_COMPLETE for t in now.trials), now.trials
        best = min(now.trials, key=lambda t: t.value)
        assert now.HasField("best") and now.best.number == best.number
        assert now.best.value == best.value
        assert set(now.best.params) == {"x", "k"}
        # Each trial was a job of the consumer that ran the filled-in command.
        job = c.get_job(now.trials[0].job_id)
        assert job.state == jobs_pb2.SUCCEEDED and job.spec.consumer == "/team"
        assert job.spec.env["SCHEDULERD_TRIAL"] == "0"


def test_asha_prunes_trials_early_and_their_gpus_go_back_at_once(tmp_path: Path) -> None:
    # 20 steps of 0.3 s: a trial left alone runs 6 s. The script ignores the
    # pruner's answer (IGNORE_PRUNE=1): the daemon must stop the job itself.
    asha = PrunerSpec(kind="asha", min_resource=1, reduction_factor=3)
    with running_cluster(tmp_path, POLICY, {"n1": 4}) as cluster:
        c = cluster.client
        ignore = {"IGNORE_PRUNE": "1"}
        s = spec(tmp_path, trials=10, parallel=4, steps=20, pause=0.3, pruner=asha, env=ignore)
        exp = c.create_experiment(s)
        done = wait_for(
            "the experiment to finish",
            lambda: (e := c.get_experiment(exp.id)).state == pb.EXPERIMENT_DONE and e,
            timeout_s=120,
            every_s=0.3,
        )
        pruned = [t for t in done.trials if t.state == pb.TRIAL_PRUNED]
        assert pruned, [(t.number, t.state, t.reason) for t in done.trials]
        assert any(t.state == pb.TRIAL_COMPLETE for t in done.trials)
        for t in pruned:
            assert t.reason.startswith("pruned at step"), t.reason
            assert t.last_step < 19 and t.HasField("value")
            job = c.get_job(t.job_id)
            assert job.state == jobs_pb2.CANCELLED, job
            assert "pruned" in job.reason
            ran = (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
            assert ran < 5.0, f"trial {t.number} ran {ran:.1f} s, its natural length is 6 s"
            # Stopped at once: the job ended right after the pruning decision.
            gap = (job.end_time.ToNanoseconds() - t.ended.ToNanoseconds()) / 1e9
            assert gap < 2.0, f"trial {t.number}'s job ended {gap:.1f} s after it was pruned"


SHARES = """
version: 1
consumers:
  a: {share: 1}
  b: {share: 3}
"""


def test_two_experiments_share_the_gpus_by_their_consumers_shares(tmp_path: Path) -> None:
    with running_cluster(tmp_path, SHARES, {"n1": 4, "n2": 4}) as cluster:
        c = cluster.client
        a = c.create_experiment(spec(tmp_path, "/a", trials=300, parallel=12, steps=8, pause=0.3))
        b = c.create_experiment(spec(tmp_path, "/b", trials=300, parallel=12, steps=8, pause=0.3))

        def running() -> tuple[int, int]:
            return (
                c.get_experiment(a.id).trials_running,
                c.get_experiment(b.id).trials_running,
            )

        wait_for("the 2:6 split", lambda: running() == (2, 6), timeout_s=60, every_s=0.2)
        samples, backlogged = [], 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            ea, eb = c.get_experiment(a.id), c.get_experiment(b.id)
            samples.append((ea.trials_running, eb.trials_running))
            backlogged += ea.trials_waiting > 0 and eb.trials_waiting > 0
            time.sleep(0.25)
        # Both backlogged (12 unfinished each, 300 to go): waiting trials in nearly
        # every sample (a trial that ends is replaced within moments).
        assert backlogged >= len(samples) * 3 // 4, (backlogged, len(samples))
        assert all(x <= 2 and y <= 6 for x, y in samples), str(samples)
        assert samples.count((2, 6)) >= len(samples) // 2, samples
        assert c.get_experiment(b.id).trials_finished >= 6  # trials ended and were replaced

        stopped = c.stop_experiment(a.id)
        assert stopped.state == pb.EXPERIMENT_STOPPED
        assert all(
            t.state in (pb.TRIAL_COMPLETE, pb.TRIAL_STOPPED, pb.TRIAL_FAILED)
            for t in stopped.trials
        )
        wait_for("no job of /a left", lambda: not c.list_jobs("/a", ["PENDING", "RUNNING"]))
        c.stop_experiment(b.id)


def test_sigkill_mid_experiment_loses_no_result_and_it_finishes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with running_cluster(tmp_path, POLICY, {"n1": 4}) as cluster:
        c = cluster.client
        exp = c.create_experiment(
            spec(tmp_path, trials=8, parallel=3, steps=10, pause=0.3, runs=runs)
        )
        before = wait_for(
            "two trials complete and others running",
            lambda: (
                (e := c.get_experiment(exp.id)).trials_finished >= 2 and e.trials_running >= 1 and e
            ),
            timeout_s=60,
        )
        cluster.kill_daemon()
        time.sleep(1.5)  # trials go on and retry their reports meanwhile
        cluster.start_daemon()

        done = wait_for(
            "the experiment to finish",
            lambda: (e := c.get_experiment(exp.id)).state == pb.EXPERIMENT_DONE and e,
            timeout_s=90,
            every_s=0.3,
        )
        # A SIGKILL while Optuna writes a trial's parameters one by one leaves that trial
        # half asked: the restarted daemon fails it in Optuna and asks another (docs/hpo.md),
        # so its number is missing here, and the log says why.
        numbers = [t.number for t in done.trials]
        half_asked = sorted(set(range(max(numbers) + 1)) - set(numbers))
        assert len(numbers) == 8 and numbers == sorted(numbers), numbers
        log = cluster.log_tail(100_000)
        for number in half_asked:
            assert f"trial {number} was asked but has only parameters" in log, number
        assert all(t.state == pb.TRIAL_COMPLETE for t in done.trials), [
            (t.number, t.state, t.reason) for t in done.trials
        ]
        for t in before.trials:  # results recorded before the crash are kept as they were
            if t.state == pb.TRIAL_COMPLETE:
                assert done.trials[t.number].value == t.value
        for number in numbers:  # each trial ran once: one process, never restarted
            assert len((runs / str(number)).read_text().split()) == 1, number
        # Optuna asked the 8 trials (and any half asked, failed) and was told every result.
        study = optuna.load_study(
            study_name=f"experiment-{exp.id}",
            storage=f"sqlite:///{cluster.db}.optuna.sqlite",
        )
        assert [t.number for t in study.trials] == sorted(numbers + half_asked)
        states = {t.number: t.state for t in study.trials}
        assert all(states[n] == optuna.trial.TrialState.COMPLETE for n in numbers), states
        assert all(states[n] == optuna.trial.TrialState.FAIL for n in half_asked), states
        complete = {t.number: t.value for t in study.trials if t.number in numbers}
        assert complete == {t.number: t.value for t in done.trials}


def _schedctl(cluster, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", "--daemon", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_schedctl_hpo_create_show_list_plot_and_stop(tmp_path: Path) -> None:
    trial_file(tmp_path)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(
        f"""name: cli
consumer: /team
command: [{sys.executable}, trial.py, "3", "0.2"]
params:
  x: {{type: float, low: 0, high: 1}}
  k: {{type: int, low: 1, high: 3}}
objective: {{metric: loss, direction: minimize}}
sampler: random
seed: 3
max_trials: 4
max_parallel: 2
"""
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(exp_file.read_text().replace("max_parallel: 2", "max_parallel: 0"))
    with running_cluster(tmp_path, POLICY, {"n1": 4}) as cluster:
        refused = _schedctl(cluster, "hpo", "create", str(bad))
        assert refused.returncode == 1
        assert f"{bad}:11: max_parallel: must be at least 1, got 0" in refused.stderr
        assert cluster.client.list_experiments() == []

        created = _schedctl(cluster, "hpo", "create", str(exp_file))
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("created experiment 1 (cli) on /team: 4 trials")
        watched = _schedctl(cluster, "hpo", "show", "1", "--watch")
        assert watched.returncode == 0, watched.stderr
        assert "DONE" in watched.stdout and "[" + "#" * 30 + "] 4/4 (100%)" in watched.stdout
        shown = _schedctl(cluster, "hpo", "show", "1")
        assert "best: " in shown.stdout and "TRIAL  STATE" in shown.stdout
        assert shown.stdout.count("COMPLETE") == 4, shown.stdout
        listed = _schedctl(cluster, "hpo", "list")
        assert listed.stdout.splitlines()[1].split()[:5] == ["1", "cli", "/team", "DONE", "4/4"]
        plots = _schedctl(cluster, "hpo", "plot", "1", "--out", str(tmp_path / "plots"))
        assert plots.returncode == 0, plots.stderr
        for name in ("objective", "intermediate"):
            png = tmp_path / "plots" / f"experiment-1-{name}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
        stopped = _schedctl(cluster, "hpo", "stop", "1")
        assert "experiment 1 DONE" in stopped.stdout  # already over: nothing to stop
        missing = _schedctl(cluster, "hpo", "show", "9")
        assert missing.returncode == 1 and "no experiment 9" in missing.stderr


NESTED = """
version: 1
consumers:
  org:
    consumers:
      x: {share: 1}
"""


def test_create_refuses_a_bad_spec_naming_each_field_and_creates_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, NESTED, {"n1": 2}) as cluster:
        c = cluster.client
        for consumer, words in [
            ("/nope", "spec.consumer: consumer '/nope' does not exist"),
            ("/org", "spec.consumer: consumer /org is a parent"),
        ]:
            with pytest.raises(ClientError) as refused:
                c.create_experiment(spec(tmp_path, consumer))
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert words in refused.value.details, refused.value.details
        bad = spec(tmp_path, "/org/x", parallel=0)
        bad.params[0].float_range.low = 2.0  # above high
        bad.gpus.min, bad.gpus.max = 3, 3  # more than the cluster's 2
        with pytest.raises(ClientError) as refused:
            c.create_experiment(bad)
        details = refused.value.details
        assert "spec.params.x.high: must be above low (2.0), got 1.0" in details
        assert "spec.max_parallel: must be at least 1, got 0" in details
        assert details.endswith("nothing was created")
        bad.max_parallel = 1
        bad.params[0].float_range.low = 0.0
        with pytest.raises(ClientError, match=r"spec.gpus: can never fit"):
            c.create_experiment(bad)
        assert c.list_experiments() == [] and c.list_jobs() == []
        with pytest.raises(ClientError, match="no experiment 1"):
            c.get_experiment(1)
