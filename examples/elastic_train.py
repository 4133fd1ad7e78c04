"""A real PyTorch training job that runs elastic (SCHEDULERD_ELASTIC=1) or rigid.

An MLP learns a fixed random "teacher" function from synthetic data. The data of step s is
generated from a seed that depends only on s, so every run, and every world size, sees the
same data: each step's global batch is split across the current members by rank, and DDP
averages the gradients, so the training trajectory does not depend on how many workers there
are (up to float rounding). That makes resizes easy to check: the loss must go on from where
it was, and the parameters must be identical on every rank.

    python examples/elastic_train.py --steps 200 --trace /tmp/trace.jsonl
    schedctl submit --consumer /default --gpus 1:4 -- python examples/elastic_train.py ...

It also runs under torchrun (torch.distributed.run), for comparison (bench/resize.py): then
it takes RANK and WORLD_SIZE from torchrun, and a restarted worker resumes from --checkpoint
(saved every --checkpoint-every steps), so the steps since that checkpoint are done again.

Trace: one JSON line per step and per worker (step, world, rank, worker, pid, generation,
loss, checksum of the parameters, how long the step boundary before it took).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

# isort: off
# schedulerd.elastic first: it installs the SIGUSR1 handler before torch loads (a second or
# more), so that a joiner released while it starts exits 0 instead of dying of the signal.
from schedulerd import elastic

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# isort: on

DIM = 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="total optimizer steps of the job")
    p.add_argument("--step-time", type=float, default=0.0, help="extra seconds slept per step")
    p.add_argument("--trace", help="append one JSON line per step and worker to this file")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=48, help="global batch, split across workers")
    p.add_argument("--seed", type=int, default=0, help="selects the data and the teacher")
    p.add_argument(
        "--checkpoint", help="directory of the checkpoint: saved on SIGTERM, loaded at start"
    )
    p.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps")
    return p.parse_args()


def teacher(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + seed)
    # Scaled so that the targets are of order 1 and the loss visibly falls in 100 steps.
    return torch.randn(DIM, 16, generator=g) / DIM**0.5, torch.randn(16, 1, generator=g) / 4


def global_batch(step: int, size: int, seed: int, w: tuple[torch.Tensor, torch.Tensor]):
    """The same (x, y) for a given step in every process, whatever the world size."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(size, DIM, generator=g)
    y = torch.sin(x @ w[0]) @ w[1] + 0.01 * torch.randn(size, 1, generator=g)
    return x, y


def make_model() -> nn.Module:
    # Every worker may build it from any seed: the job starts everyone from worker 0's state.
    return nn.Sequential(
        nn.Linear(DIM, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def checksum(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


class Trace:
    """One write() per line on an O_APPEND file: lines from several processes never mix."""

    def __init__(self, path: str | None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def write(self, record: dict) -> None:
        if self.fd is not None:
            os.write(self.fd, (json.dumps(record) + "\n").encode())


def under_torchrun() -> bool:
    """Started by torchrun rather than by schedulerd's agent (or by hand)."""
    return (
        os.environ.get("SCHEDULERD_ELASTIC") != "1"
        and "TORCHELASTIC_RUN_ID" in os.environ
        and "RANK" in os.environ
    )


class TorchrunJob:
    """The part of `elastic.Job` this script uses, for a run under torchrun (to compare
    the two: bench/resize.py). torchrun changes the membership by stopping every worker
    (SIGTERM) and starting new ones with new RANK and WORLD_SIZE; those resume from the last
    checkpoint, so the steps done since it are done again. `worker` in the trace is the
    global rank, `gen` torchrun's restart count (which a scale-up does not raise)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        checkpoint: str | None,
        checkpoint_every: int,
    ) -> None:
        self.module = model
        self.optimizer = optimizer
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.worker_id = self.rank
        self.generation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.step = 0
        self.last_sync_s = 0.0
        self._ckpt = elastic.Checkpointer(checkpoint) if checkpoint else None
        # The Checkpointer made SIGTERM a flag. Under torchrun SIGTERM means "you are being
        # restarted" and nobody waits for a save: die at once, like a plain torchrun script.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._every = checkpoint_every
        self._hooks: list[Callable[[int, int], None]] = []
        self._ddp: DistributedDataParallel | None = None

    @property
    def model(self) -> nn.Module:
        assert self._ddp is not None
        return self._ddp

    def on_resize(self, hook: Callable[[int, int], None]) -> Callable[[int, int], None]:
        self._hooks.append(hook)
        return hook

    def start(self) -> TorchrunJob:
        if os.environ.get("MASTER_ADDR", "").startswith(("127.", "localhost")):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        timeout = float(os.environ.get(elastic.TIMEOUT_VAR, elastic.DEFAULT_TIMEOUT_S))
        dist.init_process_group(elastic.backend(), timeout=timedelta(seconds=timeout))
        box = [self._ckpt.load() if self._ckpt is not None and self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)  # everyone resumes from rank 0's checkpoint
        state = box[0]
        if state is not None:
            self.step = int(state["step"])
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            print(f"[rank {self.rank}] resumed from the checkpoint at step {self.step}")
        self._ddp = DistributedDataParallel(self.module)
        for hook in self._hooks:
            hook(0, self.world_size)
        return self

    def sync(self) -> None:
        t0 = time.perf_counter()
        self.step += 1
        if self._ckpt and self._every and self.step % self._every == 0 and self.rank == 0:
            self._ckpt.save(
                {
                    "step": self.step,
                    "world": self.world_size,
                    "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "extras": {},
                }
            )
        self.last_sync_s = time.perf_counter() - t0

    def close(self) -> None:
        dist.destroy_process_group()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = elastic.device()
    torch.manual_seed(args.seed)
    model = make_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    checkpoint = os.path.join(args.checkpoint, "checkpoint.pt") if args.checkpoint else None
    job: elastic.Job | TorchrunJob
    if under_torchrun():
        job = TorchrunJob(
            model, optimizer, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every
        )
    else:
        job = elastic.Job(
            model, optimizer, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every
        )
    shard = {"size": args.batch}  # this worker's part of each step's global batch

    @job.on_resize
    def rescale(old_world: int, new_world: int) -> None:
        # The global batch stays fixed, so the per-worker batch shrinks as workers join and
        # the learning rate stays as it is. A script that keeps the per-worker batch fixed
        # instead would scale the learning rate with the world size here, from the new size
        # (not from the current value: joiners run this too, on the state they received).
        shard["size"] = -(-args.batch // new_world)  # the last rank may get a few less
        for group in optimizer.param_groups:
            group["lr"] = args.lr
        print(
            f"[worker {job.worker_id}] world {old_world} -> {new_world}: "
            f"about {shard['size']} samples per worker",
            flush=True,
        )

    job.start()
    trace = Trace(args.trace)
    w = teacher(args.seed)
    loss_fn = nn.MSELoss()
    while job.step < args.steps:
        x, y = global_batch(job.step, args.batch, args.seed, w)
        mine = slice(job.rank * shard["size"], (job.rank + 1) * shard["size"])
        loss = loss_fn(job.model(x[mine].to(device)), y[mine].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if args.step_time:
            time.sleep(args.step_time)
        trace.write(
            {
                "step": job.step + 1,
                "world": job.world_size,
                "rank": job.rank,
                "worker": job.worker_id,
                "pid": os.getpid(),
                "gen": job.generation,
                "loss": loss.item(),
                "checksum": checksum(model),
                "sync_ms": round(job.last_sync_s * 1000, 3),
                "t": time.time(),
            }
        )
        job.sync()
    job.close()
    print(f"[worker {job.worker_id}] done at step {job.step}, world {job.world_size}", flush=True)


if __name__ == "__main__":
    if under_torchrun():
        # A peer that torchrun stopped breaks the collectives of the others: end at once
        # (exit 1, so that torchrun restarts the group), as shutting the interpreter down
        # with a broken gloo group can hang.
        try:
            main()
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    else:
        main()
