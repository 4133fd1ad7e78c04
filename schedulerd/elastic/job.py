"""The training script's handle on its job: membership, step boundaries, state, hooks.

Per-step protocol (`sync()`, every member, same step): one all_reduce of a small int64
"flags" tensor laid out as

    [ leave[0..W-1] | stop | joiner slots[0..S-1] ]

each rank writes its own `leave` slot (SIGUSR1 seen), any rank may set `stop` (SIGTERM
seen), and rank 0 alone fills the joiner slots with the ids (+1) of joiners it has claimed
and heard back from. After the sum every rank holds the same facts, so every rank takes the
same decision in the same step, without a second round:

- stop: rank 0 saves the checkpoint, everyone leaves (exit 143);
- else, leavers or joiners: the new members are the survivors in their old rank order, then
  the joiners by worker id (so worker 0 stays rank 0 and is always the one that sends the
  state); leavers destroy their group and exit 0; the others form generation g+1, rank 0
  broadcasts the state if anyone is new, DDP is re-wrapped, the resize hooks run;
- else nothing: the cost of a step boundary is that one small all_reduce (plus, on rank 0,
  one store round trip to look for joiners).

Every wait on a peer is bounded by the timeout (SCHEDULERD_ELASTIC_TIMEOUT, 30 s): a dead or
stalled peer makes the collective fail, which ends this worker with an error (exit 1) instead
of a hang. Start-up waits (reaching the store, the other initial workers) have their own,
longer bound (SCHEDULERD_ELASTIC_START_TIMEOUT): workers start unevenly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._C._distributed_c10d import HashStore, TCPStore
from torch.nn.parallel import DistributedDataParallel

from schedulerd.elastic import devices as _device
from schedulerd.elastic import group, rendezvous, transfer
from schedulerd.elastic.checkpoint import Checkpointer
from schedulerd.elastic.env import WorkerEnv
from schedulerd.elastic.exits import ElasticError, Released, Stopped, first_line
from schedulerd.elastic.signals import FLAGS, install_release_handler, install_stop_handler

log = logging.getLogger("schedulerd.elastic")

ResizeHook = Callable[[int, int], None]
NO_MAX_SLOTS = 64  # joiner slots per step when the job's maximum is unknown


class Job:
    """Wraps a model (and its optimizer) for elastic data-parallel training.

    Typical use::

        job = elastic.Job(model, optimizer, checkpoint="ckpt/state.pt").start()
        while job.step < total_steps:
            loss = loss_fn(job.model(x_for(job.step, job.rank, job.world_size)), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            job.sync()          # step boundary: may resize, release or stop this worker
        job.close()

    Use `job.model` (the current DDP wrapper) for every forward pass and keep no reference
    to it across `sync()`: it is replaced at every resize. Without SCHEDULERD_ELASTIC=1 the
    job is one process without torch.distributed, and `job.model` is the model itself.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        extras: dict[str, Any] | None = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 0,
        ddp_kwargs: dict[str, Any] | None = None,
        env: WorkerEnv | None = None,
    ) -> None:
        self.env = env if env is not None else WorkerEnv.from_environ()
        self.module = model
        self.optimizer = optimizer
        # Small user state carried across resizes and checkpoints (tensors, numbers, lists).
        self.extras: dict[str, Any] = dict(extras or {})
        self.step = 0  # completed steps
        self.generation = 0
        self.members: list[int] = [self.env.worker_id]
        self.rank = 0
        self.world_size = 1
        self.device = _device.device()
        self.backend = _device.backend()
        self.last_sync_s = 0.0  # time the last sync() took, resize included
        self._ckpt = Checkpointer(checkpoint) if checkpoint else None
        self._checkpoint_every = checkpoint_every
        self._ddp_kwargs = dict(ddp_kwargs or {})
        self._hooks: list[ResizeHook] = []
        self._ddp: DistributedDataParallel | None = None
        self._store: TCPStore | None = None
        self._door: rendezvous.Doorkeeper | None = None
        self._slots = self.env.max_workers if self.env.max_workers > 0 else NO_MAX_SLOTS
        self._started = False
        self._closed = False
        self._warned_worker0 = False
        install_stop_handler()
        if self.env.elastic:
            install_release_handler(exit_at_once=self.env.join)

    # --- what scripts read ------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The module to call for forward passes: the DDP wrapper of this generation."""
        return self._ddp if self._ddp is not None else self.module

    @property
    def worker_id(self) -> int:
        return self.env.worker_id

    @property
    def is_elastic(self) -> bool:
        return self.env.elastic

    def on_resize(self, hook: ResizeHook) -> ResizeHook:
        """`hook(old_world, new_world)` runs on every member after each membership change,
        once the state is in place (so it may set the learning rate, which the state
        transfer would otherwise overwrite), and once at start with old_world == 0. Compute
        from the new size, not from the current value: a joiner runs it too, on the
        state it received. Usable as a decorator."""
        self._hooks.append(hook)
        return hook

    def should_stop(self) -> bool:
        return FLAGS.stop

    def request_stop(self) -> None:
        """Stop at the next step boundary as if SIGTERM had come (checkpoint, exit 143)."""
        FLAGS.stop = True

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Job:
        """Join the job. Initial workers form generation 0 together and take worker 0's state
        (its checkpoint, if there is one). A joiner announces itself and blocks until the
        members admit it at a step boundary, then receives the state. Returns self."""
        if self._started:
            raise RuntimeError("Job.start() called twice")
        self._started = True
        if not self.env.elastic:
            self._load_checkpoint()
            self._run_hooks(0)
            return self
        _install_exit_on_error()
        _device.prepare(self.env.store_is_loopback)
        self._store = rendezvous.connect(self.env)
        self._warm_up()  # before anyone waits for us
        if self.env.join:
            self._join()
        else:
            self._form_initial()
        return self

    def _form_initial(self) -> None:
        assert self._store is not None
        if self.env.hosts_store:
            self._door = rendezvous.Doorkeeper(self._store, self.env.timeout_s)
        rendezvous.wait_for_initial(self._store, self.env)
        self._enter(0, list(self.env.initial))
        state = None
        if self.rank == 0:
            self._load_checkpoint()
            state = self._state(0)
        # Everyone starts from worker 0's state, whatever their own seeds made.
        self._receive(self._broadcast(state))
        self._wrap()
        self._run_hooks(0)
        self._boundary()  # workers released or joiners ready already: handle them now

    def _join(self) -> None:
        assert self._store is not None
        joiner = rendezvous.Joiner(self._store, self.env.worker_id)
        install_release_handler(exit_at_once=False)  # from here on the claim decides
        joiner.register()
        log.info("worker %d waiting to be admitted", self.env.worker_id)
        gen, members = joiner.wait_for_admission()
        self._enter(gen, members)
        state = self._broadcast(None)
        self._receive(state)
        self._wrap()
        self._run_hooks(int(state["world"]))
        log.info(
            "worker %d admitted: generation %d, rank %d of %d, step %d",
            self.env.worker_id,
            gen,
            self.rank,
            self.world_size,
            self.step,
        )

    def sync(self) -> None:
        """The step boundary: call once per step, after the optimizer step, on every member.
        May raise Released (exit 0) or Stopped (exit 143) in this worker; on the others it
        returns after the resize, with rank and world_size updated."""
        t0 = time.perf_counter()
        self.step += 1
        if self._ckpt and self._checkpoint_every and self.step % self._checkpoint_every == 0:
            self.save_checkpoint()
        if self.env.elastic:
            self._boundary()
        elif FLAGS.stop:
            self._stop()
        self.last_sync_s = time.perf_counter() - t0

    def save_checkpoint(self) -> None:
        """Rank 0 saves (the state is the same everywhere); a no-op elsewhere. Keep it well
        under the timeout: the other members wait for rank 0 at the next boundary."""
        if self._ckpt is not None and self.rank == 0:
            self._ckpt.save(self._state(self.world_size))

    def close(self) -> None:
        """Leave at the end of training: tell waiting joiners the job is over, and destroy
        the process group in the safe order."""
        if self._closed:
            return
        self._closed = True
        if self.env.elastic and self._started:
            if self._door is not None:
                self._door.close([])
            group.dissolve(self._drop_ddp)

    def __enter__(self) -> Job:
        return self.start() if not self._started else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()

    # --- the step boundary ----------------------------------------------------------------

    def _boundary(self) -> None:
        w, s = self.world_size, self._slots
        flags = torch.zeros(w + 1 + s, dtype=torch.int64)
        if FLAGS.release:
            if self.rank == 0:
                if not self._warned_worker0:
                    log.warning("SIGUSR1 ignored: worker 0 hosts the store and is never released")
                    self._warned_worker0 = True
            else:
                flags[self.rank] = 1
        if FLAGS.stop:
            flags[w] = 1
        claimed: list[int] = []
        if self._door is not None and not FLAGS.stop:
            room = s if self.env.max_workers <= 0 else self.env.max_workers - w
            claimed = self._door.claim(max(0, min(room, s)))
            for i, wid in enumerate(claimed):
                flags[w + 1 + i] = wid + 1
        flags = flags.to(self.device)
        try:
            dist.all_reduce(flags)
        except RuntimeError as e:
            raise ElasticError(
                f"step {self.step}: a peer died or stalled at the step boundary "
                f"(generation {self.generation}, timeout {self.env.timeout_s:g} s): {first_line(e)}"
            ) from e
        values = flags.tolist()
        leavers = {r for r in range(1, w) if values[r]}
        joiners = sorted(v - 1 for v in values[w + 1 :] if v)
        if values[w]:
            self._stop(claimed)
        if leavers or joiners:
            self._resize(leavers, joiners)

    def _resize(self, leavers: set[int], joiners: list[int]) -> None:
        t0 = time.perf_counter()
        old_world = self.world_size
        left = [self.members[r] for r in sorted(leavers)]
        survivors = [wid for r, wid in enumerate(self.members) if r not in leavers]
        members = survivors + joiners
        gen = self.generation + 1
        if self._door is not None:
            self._door.admit(gen, members, joiners)
        leaving = self.rank in leavers
        group.dissolve(self._drop_ddp)
        if leaving:
            log.info("worker %d released at step %d", self.env.worker_id, self.step)
            raise Released()
        t1 = time.perf_counter()
        self._enter(gen, members)
        t2 = time.perf_counter()
        if joiners:
            state = self._broadcast(self._state(old_world) if self.rank == 0 else None)
            del state  # survivors already hold exactly this state; joiners apply theirs
        t3 = time.perf_counter()
        self._wrap()
        self._run_hooks(old_world)
        t4 = time.perf_counter()
        log.info(
            "generation %d at step %d: %d -> %d workers (left: %s, joined: %s) in %.0f ms "
            "(teardown %.0f, new group %.0f, state %.0f, DDP and hooks %.0f)",
            gen,
            self.step,
            old_world,
            self.world_size,
            left or "-",
            joiners or "-",
            (t4 - t0) * 1000,
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
            (t4 - t3) * 1000,
        )

    def _stop(self, claimed: list[int] | None = None) -> None:
        if self.rank == 0:
            self.save_checkpoint()
        if self._door is not None:
            self._door.close(claimed or [])
        if self.env.elastic:
            group.dissolve(self._drop_ddp)
        self._closed = True
        log.info("worker %d stopped at step %d", self.env.worker_id, self.step)
        raise Stopped()

    # --- membership and state ------------------------------------------------------------

    def _enter(self, gen: int, members: list[int]) -> None:
        assert self._store is not None
        self.generation = gen
        self.members = members
        self.rank = members.index(self.env.worker_id)
        self.world_size = len(members)
        try:
            group.form(
                self._store, gen, self.rank, self.world_size, self.backend, self.env.timeout_s
            )
            _install_exit_on_error()
        except RuntimeError as e:
            raise ElasticError(
                f"generation {gen} (workers {members}) did not form within "
                f"{self.env.timeout_s:g} s: {first_line(e)}"
            ) from e

    def _wrap(self) -> None:
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # init_sync=False: the state was just broadcast (or is unchanged); DDP's own initial
        # broadcast would be a second, redundant one.
        self._ddp = DistributedDataParallel(
            self.module, device_ids=device_ids, init_sync=False, **self._ddp_kwargs
        )

    def _drop_ddp(self) -> None:
        self._ddp = None

    def _state(self, world: int) -> dict[str, Any]:
        return {
            "step": self.step,
            "world": world,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "extras": self.extras,
        }

    def _load_checkpoint(self) -> None:
        state = self._ckpt.load() if self._ckpt is not None else None
        if state is not None:
            self._apply(state)
            log.info("resumed from the checkpoint at step %d", self.step)

    def _apply(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.module.load_state_dict(state["model"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.extras = dict(state.get("extras") or {})

    def _broadcast(self, state: dict[str, Any] | None) -> dict[str, Any]:
        try:
            result: dict[str, Any] = transfer.broadcast(state, 0, self.device)
        except RuntimeError as e:
            raise ElasticError(
                f"state transfer in generation {self.generation} failed: {first_line(e)}"
            ) from e
        return result

    def _receive(self, state: dict[str, Any]) -> None:
        if self.rank != 0:
            self._apply(state)

    def _run_hooks(self, old_world: int) -> None:
        for hook in self._hooks:
            hook(old_world, self.world_size)

    def _warm_up(self) -> None:
        """Pay DDP's lazy first-use cost (1-5 s of imports: dynamo, sympy, unless the optimizer
        already paid it) before announcing ourselves, so that nobody waits for it inside a
        collective (bounded by the short timeout): wrap the model once in a private
        one-process gloo group, then take that down in the safe order."""
        try:
            dist.init_process_group(
                "gloo",
                store=HashStore(),
                rank=0,
                world_size=1,
                timeout=timedelta(seconds=self.env.timeout_s),
            )
            self._ddp = DistributedDataParallel(self.module, init_sync=False)
        except Exception as e:  # only an optimisation: the real group may still work
            log.warning("DDP warm-up failed (admission will take longer): %s", first_line(e))
        finally:
            group.dissolve(self._drop_ddp)
            _install_exit_on_error()


def _install_exit_on_error() -> None:
    """An uncaught error in an elastic worker ends it at once with exit code 1, after the
    traceback. Interpreter shutdown with a broken gloo group still alive can hang (threads
    joined with the GIL held); the job must end, not hang, so that shutdown is skipped.

    Called after every init_process_group: each one wraps sys.excepthook in a hook that
    captures stderr while the wrapped hook runs (to prefix "[rankN]"), which would swallow
    the traceback printed before os._exit, and would nest one level deeper per resize."""
    global _script_excepthook
    if _script_excepthook is None:
        _script_excepthook = sys.excepthook
    sys.excepthook = _exit_on_error


_script_excepthook: Callable[..., Any] | None = None


def _exit_on_error(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    try:
        (_script_excepthook or sys.__excepthook__)(exc_type, exc, tb)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(1)
