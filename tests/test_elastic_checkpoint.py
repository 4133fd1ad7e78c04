"""Rigid jobs: SIGTERM makes the script save a checkpoint and exit; the next attempt resumes
from it, exactly (the optimizer state comes back too). Plus the library's small parts."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
from elastic_harness import EXAMPLE, REPO, wait_until

from schedulerd.elastic import STOPPED_EXIT_CODE, Checkpointer, WorkerEnv
from schedulerd.elastic import signals as elastic_signals
from schedulerd.elastic.env import ElasticEnvError


def run_rigid(
    tmp_path: Path, name: str, steps: int, checkpoint: Path | None, attempt: int = 0
) -> tuple[subprocess.Popen[bytes], Path]:
    trace = tmp_path / f"{name}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.update(
        {
            "SCHEDULERD_ATTEMPT": str(attempt),
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
    )
    cmd = [sys.executable, str(EXAMPLE), "--steps", str(steps), "--trace", str(trace)]
    cmd += ["--step-time", "0.01"]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, trace


def records(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


def reference_run(steps: int) -> dict[int, dict]:
    """The example's rigid training loop, uninterrupted, in this process (one thread, like
    the workers): the same data, seed and math, so the same numbers bit for bit."""
    spec = importlib.util.spec_from_file_location("elastic_train_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ex.make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        w = ex.teacher(0)
        out = {}
        for step in range(steps):
            x, y = ex.global_batch(step, 48, 0, w)
            loss = torch.nn.MSELoss()(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            out[step + 1] = {"loss": loss.item(), "checksum": ex.checksum(model)}
        return out
    finally:
        torch.set_num_threads(threads)


def test_rigid_job_saves_on_sigterm_and_resumes_exactly(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first, trace1 = run_rigid(tmp_path, "first", 1_000_000, ckpt)
    try:
        wait_until("the first run training", lambda: len(records(trace1)) >= 10, 60)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == STOPPED_EXIT_CODE
    finally:
        first.kill()
    stopped_at = records(trace1)[-1]["step"]
    assert (ckpt / "checkpoint.pt").is_file()
    assert not [p for p in ckpt.iterdir() if p.name != "checkpoint.pt"], "a temporary file left"
    assert stopped_at < 50, "the first run went too far for this test"

    second, trace2 = run_rigid(tmp_path, "second", 60, ckpt, attempt=1)
    assert second.wait(60) == 0, (tmp_path / "second.log").read_text()
    resumed = records(trace2)
    assert [r["step"] for r in resumed] == list(range(stopped_at + 1, 61))
    # Not only the weights: Adam's moments and step count came back, so the resumed run is
    # the uninterrupted one, bit for bit.
    ref = reference_run(60)
    for r in records(trace1) + resumed:
        assert (r["checksum"], r["loss"]) == (ref[r["step"]]["checksum"], ref[r["step"]]["loss"])


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """A Checkpointer takes SIGTERM over; give it back to pytest afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)
    elastic_signals._installed["term"] = False


def test_checkpointer_saves_atomically(tmp_path: Path, keep_sigterm: None) -> None:
    c = Checkpointer(tmp_path / "sub" / "state.pt")
    assert c.load() is None
    state = {"step": 3, "w": torch.arange(4.0), "extras": {"k": [1, 2]}}
    c.save(state)
    c.save({**state, "step": 4})
    loaded = c.load()
    assert loaded is not None and loaded["step"] == 4 and torch.equal(loaded["w"], state["w"])
    assert os.listdir(tmp_path / "sub") == ["state.pt"]


def test_worker_env_follows_the_contract() -> None:
    env = WorkerEnv.from_environ(
        {
            "SCHEDULERD_ELASTIC": "1",
            "SCHEDULERD_WORKER_ID": "5",
            "SCHEDULERD_ELASTIC_INITIAL": "1,0,2",
            "SCHEDULERD_ELASTIC_JOIN": "1",
            "SCHEDULERD_ELASTIC_STORE": "10.0.0.7:29500",
            "SCHEDULERD_ELASTIC_MIN": "1",
            "SCHEDULERD_ELASTIC_MAX": "4",
            "SCHEDULERD_ATTEMPT": "2",
            "SCHEDULERD_ELASTIC_TIMEOUT": "7.5",
        }
    )
    assert (env.worker_id, env.initial, env.join, env.store_host, env.store_port) == (
        5,
        (0, 1, 2),
        True,
        "10.0.0.7",
        29500,
    )
    assert (env.max_workers, env.attempt, env.timeout_s) == (4, 2, 7.5)
    assert not env.hosts_store and not env.store_is_loopback
    rigid = WorkerEnv.from_environ({})
    assert not rigid.elastic and rigid.timeout_s == 30.0
    bad = {"SCHEDULERD_ELASTIC": "1", "SCHEDULERD_WORKER_ID": "0"}
    with pytest.raises(ElasticEnvError, match="SCHEDULERD_ELASTIC_STORE"):
        WorkerEnv.from_environ(bad)
    with pytest.raises(ElasticEnvError, match="INITIAL"):
        WorkerEnv.from_environ(
            {**bad, "SCHEDULERD_ELASTIC_STORE": "h:1", "SCHEDULERD_ELASTIC_INITIAL": "1,2"}
        )


def test_state_transfer_round_trip() -> None:
    """In this process, a world of one: the packing keeps every dtype, shape and value."""
    import torch.distributed as dist
    from torch._C._distributed_c10d import HashStore

    from schedulerd.elastic import transfer

    state = {
        "step": 7,
        "t": [torch.arange(6, dtype=torch.float64).reshape(2, 3), torch.tensor(True)],
        "opt": {"step": torch.tensor(3.0), "m": torch.zeros(0), "half": torch.ones(3).half()},
    }
    dist.init_process_group("gloo", store=HashStore(), rank=0, world_size=1)
    try:
        tensors: list = []
        size = [0]
        skeleton = transfer._pack(state, tensors, size)
        buf = torch.zeros(size[0], dtype=torch.uint8)
        offset = 0
        for t in tensors:
            flat = t.reshape(-1).contiguous().view(torch.uint8)
            buf[offset : offset + flat.numel()] = flat
            offset += -(-flat.numel() // 16) * 16
        back = transfer._unpack(skeleton, buf, torch.device("cpu"))
        assert transfer.broadcast(state, 0, torch.device("cpu")) is state
    finally:
        dist.destroy_process_group()
    assert back["step"] == 7
    assert torch.equal(back["t"][0], state["t"][0]) and back["t"][1].item() is True
    assert back["opt"]["half"].dtype == torch.float16 and back["opt"]["m"].shape == (0,)
    assert back["opt"]["step"].item() == 3.0


def test_the_daemon_and_the_agent_never_import_torch() -> None:
    code = (
        "import sys, schedulerd.daemon.main, schedulerd.cli.main, agent.main\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('schedulerd.elastic')]\n"
        "assert not bad, bad\n"
    )
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    assert time.monotonic() - t0 < 60
