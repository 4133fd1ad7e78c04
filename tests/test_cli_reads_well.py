"""Issue 14 item 4, "a CLI that reads well": each rough edge a new user met, as a test
of what `schedctl` prints (or of the client library), most against a real daemon."""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, running_cluster, sleep_job, wait_for

from schedulerd.api.v1 import experiments_pb2 as xpb
from schedulerd.api.v1 import jobs_pb2
from schedulerd.cli.format import exit_code_text, gpus_count, jobs_table, shorten
from schedulerd.cli.main import build_parser
from schedulerd.client import JobState, WatchedJob
from schedulerd.core.reasons import amount
from schedulerd.hpo.file import ExperimentFileError, load_experiment
from schedulerd.policy import PolicyError, load_policy

ME = pwd.getpwuid(os.getuid()).pw_name
NODE = f"cli-{os.getpid()}"
POLICY = f"""
version: 1
consumers:
  lab:
    consumers:
      mine: {{users: [{ME}]}}
      theirs: {{users: [someone-else-{os.getpid()}]}}
"""
REASON = (
    "waiting for 2 GPUs: /research/vision holds 1 of its entitlement 2.9; 3 GPUs free, at "
    "most 1 on one node; below its entitlement, it is served first as GPUs free up "
    "(3rd of 14 waiting in /research/vision)"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("reads-well"), POLICY, {NODE: 4}) as c:
        yield c


def schedctl(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """schedctl as a user runs it, with no address in the environment: each test says
    where the daemon is (--daemon, wherever it likes)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    base.pop("COLUMNS", None)
    done = subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _ended(cluster: Cluster, job_id: int) -> jobs_pb2.Job | None:
    job = cluster.client.get_job(job_id)
    return job if JobState.of(job.state).ended else None


# --- `schedctl jobs`: WHY fits the terminal, GPUS says what a job holds ------------------


@pytest.mark.parametrize("room", [40, 60, 80, 100, 120, 150])
def test_a_cut_reason_keeps_whole_words_and_numbers_and_its_queue_place(room: int) -> None:
    cut = shorten(REASON, room)
    assert len(cut) <= room
    assert cut.endswith("(3rd of 14 waiting in /research/vision)" if room >= 60 else "of 14)")
    head = cut.split("…")[0]
    if "…" not in cut:  # the place alone was shortened
        head = cut.rsplit(" (", 1)[0]
    assert REASON.startswith(head)
    # The cut falls between words: what follows it in the reason is a space, ":" or ";".
    assert REASON[len(head)] in " :;", (head, REASON[len(head) :])
    for number in re.findall(r"\d+(?:\.\d+)?", cut):
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", REASON), number


def test_a_reason_that_fits_or_a_table_not_on_a_terminal_is_not_cut() -> None:
    assert shorten(REASON, None) == REASON
    assert shorten("waiting for 2 GPUs", 40) == "waiting for 2 GPUs"
    job = jobs_pb2.Job(
        id=7,
        state=jobs_pb2.PENDING,
        reason=REASON,
        spec=jobs_pb2.JobSpec(consumer="/research/vision", user="ann", gpus={"min": 2, "max": 2}),
    )
    assert REASON in jobs_table([job])
    for width in (80, 120, 200):
        lines = jobs_table([job], width).splitlines()
        assert all(len(line) <= width for line in lines), lines
        place = "(3rd of 14 waiting in /research/vision)" if width > 100 else "(3rd of 14)"
        assert lines[1].endswith(place), lines[1]


def test_gpus_shows_what_an_elastic_job_holds_and_its_range() -> None:
    held = [jobs_pb2.GpuAssignment(node="n1", index=i) for i in range(4)]
    elastic = jobs_pb2.JobSpec(gpus={"min": 1, "max": 8})
    assert gpus_count(jobs_pb2.Job(spec=elastic, gpus=held)) == "4 (1:8)"
    assert gpus_count(jobs_pb2.Job(spec=elastic)) == "1:8"
    rigid = jobs_pb2.JobSpec(gpus={"min": 2, "max": 2})
    assert gpus_count(jobs_pb2.Job(spec=rigid)) == "2"


def test_jobs_fits_columns_and_keeps_the_queue_place(cluster: Cluster) -> None:
    c = cluster.client
    blocker = c.submit("/lab/mine", sleep_job(120), gpus=4, name="blocker")
    waiting = [c.submit("/lab/mine", sleep_job(1), gpus=2, name=f"w{i}") for i in range(3)]
    try:
        wait_for("the blocker to run", lambda: c.get_job(blocker.id).state == jobs_pb2.RUNNING)
        last = waiting[-1].id
        reason = wait_for(
            "a queue place",
            lambda: (
                c.get_job(last).reason
                if "waiting in /lab/mine)" in c.get_job(last).reason
                else None
            ),
        )
        full = schedctl("jobs", "--daemon", cluster.address).stdout
        assert reason in full  # not a terminal, no COLUMNS: every word
        narrow = schedctl("jobs", "--daemon", cluster.address, env={"COLUMNS": "110"}).stdout
        rows = [line for line in narrow.splitlines() if line.startswith(f"{last} ")]
        assert rows and len(rows[0]) <= 110, narrow
        assert rows[0].endswith("waiting in /lab/mine)"), rows[0]
        assert f"{blocker.id} " in narrow and f"{NODE}:0,1,2,3" in narrow
    finally:
        for job in (blocker, *waiting):
            c.cancel(job.id)


def test_jobs_shows_what_an_elastic_job_holds(cluster: Cluster) -> None:
    c = cluster.client
    job = c.submit("/lab/mine", sleep_job(120), gpus=1, gpus_max=4, name="elastic")
    try:
        # Alone on the node's 4 GPUs, it grows to all of them (work conservation).
        wait_for("it to hold 4", lambda: len(c.get_job(job.id).gpus) == 4, timeout_s=60)
        out = schedctl("jobs", "--daemon", cluster.address).stdout
        row = next(line for line in out.splitlines() if line.startswith(f"{job.id} "))
        assert " 4 (1:4) " in row, row
    finally:
        c.cancel(job.id)


# --- `schedctl show`: exit codes in words, commands as a shell takes them back -----------


def test_exit_codes_say_the_signal() -> None:
    assert exit_code_text(-15) == "killed by SIGTERM (-15)"
    assert exit_code_text(-9) == "killed by SIGKILL (-9)"
    assert exit_code_text(3) == "3"
    assert exit_code_text(143) == "143 (128 + SIGTERM)"


def test_show_says_killed_by_sigterm_and_quotes_the_command(cluster: Cluster) -> None:
    command = [
        sys.executable,
        "-c",
        "import time,os; print(os.getpid(), flush=True); time.sleep(60)",
    ]
    c = cluster.client
    job = c.submit("/lab/mine", command)
    wait_for("it to print", lambda: b"\n" in b"".join(c.logs(job.id, follow=False)))
    c.cancel(job.id)
    done = wait_for("it to end", lambda: _ended(cluster, job.id))
    assert done.exit_code == -15
    shown = schedctl("show", str(job.id), "--daemon", cluster.address).stdout
    assert "exit code:  killed by SIGTERM (-15)" in shown, shown
    line = next(x for x in shown.splitlines() if x.strip().startswith("command:"))
    printed = line.split("command:", 1)[1].strip()
    assert printed == shlex.join(command)
    assert shlex.split(printed) == command  # copied back, it is the same argv


# --- global flags anywhere, --version, help everywhere, --consumer optional --------------


def test_connection_flags_go_anywhere_and_version(cluster: Cluster) -> None:
    assert schedctl("--version").stdout.strip().startswith("schedctl ")
    for args in (
        ["--daemon", cluster.address, "consumers"],
        ["consumers", "--daemon", cluster.address],
        ["policy", "--daemon", cluster.address, "show"],
        ["policy", "show", "--daemon", cluster.address],
    ):
        assert "/lab" in schedctl(*args).stdout or "lab" in schedctl(*args).stdout
    # A command's own option of the same name stays its own: ca issue-node --ca DIR.
    args = build_parser().parse_args(["ca", "issue-node", "--ca", "/pki", "n1", "--daemon", "h:1"])
    assert (args.ca_dir, args.ca, args.daemon) == (Path("/pki"), None, "h:1")
    # After the command's --, everything is the job's.
    args = build_parser().parse_args(["submit", "--", "python", "--daemon", "x"])
    assert args.command[-2:] == ["--daemon", "x"]


def test_every_option_has_help_and_the_daemon_shows_defaults() -> None:
    def missing(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from missing(child, f"{path} {name}")
            elif not action.help:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(missing(build_parser(), "schedctl")) == []
    submit = schedctl("submit", "--help").stdout
    assert "higher runs first" in " ".join(submit.split())
    daemon = subprocess.run(
        [sys.executable, "-m", "schedulerd.daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    flat = " ".join(daemon.split())
    assert "(default: 127.0.0.1:50051)" in flat and "(default: var/schedulerd.db)" in flat


def test_submit_without_consumer_goes_to_the_only_leaf_you_may_use(cluster: Cluster) -> None:
    who = schedctl("whoami", "--daemon", cluster.address).stdout
    assert "submits to: /lab/mine" in who, who
    out = schedctl("submit", "--daemon", cluster.address, "--", "true").stdout
    assert "to /lab/mine" in out
    # A per-user default: SCHEDULERD_CONSUMER, which --consumer overrides.
    env = {"SCHEDULERD_CONSUMER": "/lab/theirs"}
    refused = schedctl("--daemon", cluster.address, "submit", "--", "true", env=env, check=False)
    assert refused.returncode != 0 and "may not submit to /lab/theirs" in refused.stderr
    ok = schedctl(
        "--daemon", cluster.address, "submit", "--consumer", "/lab/mine", "--", "true", env=env
    )
    assert "to /lab/mine" in ok.stdout


# --- the client library's watch -----------------------------------------------------------


def test_watch_of_ids_ends_when_they_end_and_names_states(cluster: Cluster) -> None:
    c = cluster.client
    jobs = [c.submit("/lab/mine", sleep_job(0.5)).id, c.submit("/lab/mine", sleep_job(0.2)).id]
    seen: list[WatchedJob] = []

    def watch() -> None:
        seen.extend(c.watch(ids=jobs))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    thread.join(120)  # a guard against a watch that never ends, not a measure
    assert not thread.is_alive(), "the watch did not end after its jobs ended"
    assert {j.id for j in seen if j.state.ended} == set(jobs)
    assert {str(j.state) for j in seen} <= {"PENDING", "RUNNING", "SUCCEEDED"}
    last = [j for j in seen if j.id == jobs[0]][-1]
    assert f"{last.state}" == "SUCCEEDED" and last.state == jobs_pb2.SUCCEEDED
    assert last.message.id == jobs[0] and last.HasField("exit_code")


def test_submit_wait_exits_as_a_shell_would_for_a_signal(cluster: Cluster) -> None:
    kill = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    done = schedctl(
        "submit",
        "--consumer",
        "/lab/mine",
        "--wait",
        "--daemon",
        cluster.address,
        "--",
        *kill,
        check=False,
    )
    assert done.returncode == 128 + 15, (done.stdout, done.stderr)
    assert "FAILED: killed by" in done.stderr and "SIGTERM" in done.stderr, done.stderr


# --- reasons and policy apply --dry-run ---------------------------------------------------


def test_amounts_in_reasons_have_at_most_one_decimal() -> None:
    assert [amount(x) for x in (2.90909, 3.0, 0.04, 12.25)] == ["2.9", "3", "0", "12.2"]


def test_dry_run_shows_full_demand_and_warns_of_owned_beyond_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    policy = tmp_path / "bigger.yaml"
    policy.write_text(
        "version: 1\nconsumers:\n  a: {owned: 3}\n  b: {owned: 3}\n  c: {share: 2, limit: 1}\n"
    )
    out = schedctl("policy", "apply", str(policy), "--dry-run", "--daemon", cluster.address)
    assert "dry run: nothing applied" in out.stdout
    header = next(line for line in out.stdout.splitlines() if line.startswith("CONSUMER"))
    assert header.split()[-1] == "FULL"
    full = {
        line.split()[0]: line.split()[-1]
        for line in out.stdout.splitlines()
        if line.split() and line.split()[0] in ("a", "b", "c")
    }
    # Owned 3 + 3 on 4 GPUs: each guarantee shrinks in proportion, to 2; c (limit 1)
    # has nothing left over.
    assert full == {"a": "2.0", "b": "2.0", "c": "0.0"}, out.stdout
    assert "the consumers own 6 GPUs and the cluster has 4" in out.stderr


# --- file errors in the loaders' words ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version: 1\nconsumers:\n  a:\n    owned: 2\n   share: 1\n", 5, "bad indentation"),
        ("version: 1\nconsumers:\n  a:\n    owned: 2\n      share: 1\n", 5, "bad indentation"),
        ("version: 1\nconsumers:\n  a:\n\towned: 2\n", 4, "a tab"),
        ("version: 1\nconsumers:\n  a: x\n  b\n", 4, "not KEY: VALUE"),
    ],
    ids=["less-than-siblings", "more-than-a-value", "tab", "no-colon"],
)
def test_bad_yaml_indentation_in_the_loaders_words(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(text, "p.yaml")
    (issue,) = e.value.issues
    assert issue.line == line and words in issue.message, issue
    assert "expected <block end>" not in str(e.value) and "<block mapping start>" not in str(
        e.value
    )


def test_hpo_file_reports_every_problem_after_an_unknown_nested_key() -> None:
    text = (
        "consumer: /lab/mine\ncommand: [python, t.py]\nobjective:\n  metric: loss\n"
        "  direction: sideways\n  metrc: typo\nparams:\n  lr: {type: float, low: 1, high: 0.1}\n"
        "max_trials: 5\nmax_parallel: 0\n"
    )
    with pytest.raises(ExperimentFileError) as e:
        load_experiment(text, "x.yaml")
    report = str(e.value)
    for expected in (
        "x.yaml:5: objective.direction: 'sideways'",
        "x.yaml:6: objective.metrc: unknown key 'metrc'",
        "x.yaml:8: params.lr.high: must be above low",
        "x.yaml:10: max_parallel: must be at least 1, got 0",
    ):
        assert expected in report, report


# --- plots --------------------------------------------------------------------------------


def test_hpo_plots_integer_ticks_pruned_apart_and_params(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from schedulerd.cli.hpo_plot import write_plots

    spec = xpb.ExperimentSpec(
        name="s",
        metric="loss",
        params=[
            xpb.Param(name="lr", float_range=xpb.FloatRange(low=1e-4, high=1, log=True)),
            xpb.Param(
                name="bs",
                categorical=xpb.Categorical(
                    choices=[xpb.ParamValue(int_value=16), xpb.ParamValue(int_value=32)]
                ),
            ),
        ],
    )
    trials = []
    for n in range(5):
        state = xpb.TRIAL_PRUNED if n % 2 else xpb.TRIAL_COMPLETE
        params = {
            "lr": xpb.ParamValue(float_value=10.0 ** -(n % 4)),
            "bs": xpb.ParamValue(int_value=16 if n % 2 else 32),
        }
        trials.append(xpb.Trial(number=n, state=state, params=params, value=1.0 / (n + 1)))
    exp = xpb.Experiment(id=3, spec=spec, trials=trials)
    paths = write_plots(exp, tmp_path)
    assert [p.name for p in paths] == [
        "experiment-3-objective.png",
        "experiment-3-intermediate.png",
        "experiment-3-params.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)


def test_hidden_curves_are_named() -> None:
    from schedulerd.sim.plots import hidden_curves

    curves = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 2.0, 3.0], [0.0, 2.001, 3.0]]
    names = ["schedulerd", "drf", "fifo", "static"]
    assert hidden_curves(names, curves, scale=4) == [("drf", "schedulerd"), ("static", "fifo")]
    assert hidden_curves(["a", "b"], [[], []]) == []
