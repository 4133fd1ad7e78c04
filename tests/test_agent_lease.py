"""The shims' lease (docs/fencing.md, leases): a job whose agent cannot hear the daemon,
or is dead or frozen, is stopped by its shim once the lease deadline the agent keeps in
its state dir has passed, and reports that it was stopped by the node (it is requeued,
not failed). While the deadline keeps moving, nothing happens."""

from __future__ import annotations

import time
from pathlib import Path

from agent_helpers import job_spec, make_runner, python, wait_ended

from agent.model import Phase
from agent.worker import LEASE_DEADLINE_FILE

IGNORES_TERM = python(
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"
)


def _deadline(state: Path, in_s: float, grace_s: float) -> None:
    (state / LEASE_DEADLINE_FILE).write_text(f"{time.time() + in_s:.3f} {grace_s}\n")


def test_a_shim_stops_its_job_when_the_lease_runs_out(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _deadline(state, 1.0, 0.5)
    with make_runner(state) as runner:
        runner.start(job_spec(1, 0, IGNORES_TERM, gpu_indices=(0,)))
        ended = wait_ended(runner, 1)  # no stop asked by the runner: the shim did it
        assert ended.phase is Phase.EXITED and ended.stopped_by_node
        assert ended.exit_code == -9  # it ignored SIGTERM: killed after the grace
        assert "lease" in ended.message


def test_a_moving_deadline_keeps_the_job(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _deadline(state, 1.5, 0.1)
    with make_runner(state) as runner:
        runner.start(job_spec(2, 0, ("sleep", "600"), gpu_indices=(0,)))
        for _ in range(6):  # 3 s: past the first deadline twice over
            time.sleep(0.5)
            _deadline(state, 1.5, 0.1)
            runner.poll()
        report = runner.report((2, 0))
        assert report is not None and report.phase is Phase.RUNNING


def test_no_deadline_file_means_no_lease(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with make_runner(state) as runner:
        runner.start(job_spec(3, 0, ("sleep", "600"), gpu_indices=(0,)))
        time.sleep(2.5)
        runner.poll()
        report = runner.report((3, 0))
        assert report is not None and report.phase is Phase.RUNNING
