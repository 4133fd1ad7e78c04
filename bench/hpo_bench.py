"""Trials per hour of a hyperparameter search through schedulerd, against the
same Optuna study run alone with the same parallelism (docs/hpo.md).

Both run the same short trial script as a subprocess per trial (a loop of
`--steps` reports, `--pause` seconds apart, then the final value; it imports
schedulerd.hpo, not torch):

- schedulerd: a daemon and one agent (fake GPUs) as subprocesses; an experiment
  of N trials, max_parallel P, random sampler, no pruner; timed from
  CreateExperiment to DONE. Each trial is a job: submit, a scheduling cycle,
  start on the agent, gRPC reports to the daemon (Optuna report + should_prune
  per step), the final value, the exit report.
- alone: `optuna.create_study(storage=sqlite)` and `study.optimize(n_jobs=P)`,
  whose objective runs the script (its reports are only printed) and parses the
  final value.

Overhead per trial = (wall through schedulerd - wall alone) x P / N: the extra
time each trial slot spent per trial. Prints a Markdown table. Time it alone on
the machine: `flock /tmp/bench.lock python bench/hpo_bench.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import optuna
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schedulerd.api.v1 import experiments_pb2 as pb  # noqa: E402
from schedulerd.client import Client  # noqa: E402
from schedulerd.hpo.codec import spec_to_pb  # noqa: E402
from schedulerd.hpo.spec import ExperimentSpec, FloatParam, IntParam  # noqa: E402

TRIAL = """
import sys, time
from schedulerd import hpo
p = hpo.params()
steps, pause = int(sys.argv[1]), float(sys.argv[2])
value = 0.0
for step in range(steps):
    value = (p["x"] - 0.3) ** 2 + p["k"] / (step + 1)
    if hpo.report(step, value):
        sys.exit(0)
    time.sleep(pause)
hpo.final(value)
"""
POLICY = "version: 1\nconsumers:\n  bench: {share: 1}\n"
PARAMS = (FloatParam("x", 0.0, 1.0), IntParam("k", 1, 3))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(address: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}")
        try:
            with grpc.insecure_channel(address) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit("the daemon did not come up")


def through_schedulerd(
    root: Path, script: Path, trials: int, parallel: int, steps: int, pause: float, tick: float
) -> float:
    address = f"127.0.0.1:{_port()}"
    (root / "policy.yaml").write_text(POLICY)
    log = open(root / "daemon.log", "wb")  # noqa: SIM115 - lives with the processes
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedulerd.daemon",
            "--listen",
            address,
            "--db",
            str(root / "s.db"),
            "--policy",
            str(root / "policy.yaml"),
            "--tick",
            str(tick),
            "--log-level",
            "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    agent = None
    try:
        _wait_serving(address, daemon)
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--daemon",
                address,
                "--node",
                "n1",
                "--fake-gpus",
                str(parallel + 1),
                "--state-dir",
                str(root / "agent"),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
        with Client(address) as c:
            while not any(n.state == 1 for n in c.nodes()):
                time.sleep(0.1)
            spec = ExperimentSpec(
                name="bench",
                consumer="/bench",
                user="bench",
                command=(sys.executable, str(script), str(steps), str(pause)),
                params=PARAMS,
                sampler="random",
                seed=1,
                max_trials=trials,
                max_parallel=parallel,
                working_dir=str(root),
            )
            began = time.perf_counter()
            exp = c.create_experiment(spec_to_pb(spec))
            for update in c.watch_experiment(exp.id):
                if update.state != pb.EXPERIMENT_RUNNING:
                    break
            wall = time.perf_counter() - began
            done = c.get_experiment(exp.id)
            complete = sum(1 for t in done.trials if t.state == pb.TRIAL_COMPLETE)
            if complete != trials:
                raise SystemExit(f"only {complete} of {trials} trials complete: {done.reason}")
            return wall
    finally:
        for proc in (agent, daemon):
            if proc is not None:
                proc.terminate()
                proc.wait(15)


def alone(root: Path, script: Path, trials: int, parallel: int, steps: int, pause: float) -> float:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{root / 'alone.sqlite'}",
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}

    def objective(trial: optuna.Trial) -> float:
        params = {"x": trial.suggest_float("x", 0.0, 1.0), "k": trial.suggest_int("k", 1, 3)}
        out = subprocess.run(
            [sys.executable, str(script), str(steps), str(pause)],
            env={**env, "SCHEDULERD_HPO_PARAMS": json.dumps(params)},
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        match = re.search(r"hpo: final: (\S+)", out.stderr)
        assert match, out.stderr
        return float(match.group(1))

    began = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=parallel)
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--parallel", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--pause", type=float, default=0.2, help="seconds between reports")
    p.add_argument("--tick", type=float, default=1.0, help="the daemon's idle cycle (default 1)")
    args = p.parse_args()
    n, par = args.trials, args.parallel
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "trial.py"
        script.write_text(TRIAL)
        solo = alone(root, script, n, par, args.steps, args.pause)
        sched = through_schedulerd(root, script, n, par, args.steps, args.pause, args.tick)
    print(
        f"{n} trials, {par} at a time; each trial: {args.steps} reports {args.pause:g} s apart "
        f"(a Python subprocess importing schedulerd.hpo); daemon tick {args.tick:g} s\n"
    )
    print("| run | wall s | trials/hour | s per trial slot | overhead per trial |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, wall in (("Optuna alone (n_jobs)", solo), ("through schedulerd", sched)):
        over = "-" if wall is solo else f"{(sched - solo) * par / n:+.2f} s"
        print(f"| {name} | {wall:.1f} | {n / wall * 3600:,.0f} | {wall * par / n:.2f} | {over} |")


if __name__ == "__main__":
    main()
