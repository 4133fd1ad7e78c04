"""One process group per membership generation, made and unmade in an order that holds.

Each generation gets its own key prefix in the job's one store (`gen<g>/`), so a new group
never reads a previous generation's rendezvous keys. The group is torch's default group, so
a script's own `dist.all_reduce(...)` calls work and always use the current members.

Teardown order (docs/design/field-notes.md, pytorch issue 56297): destroying a gloo group
and *then* dropping the DDP wrapper that used it can hang forever (the GIL is held while
joining a gloo thread that needs the GIL); it hung within 9-29 resizes every time. Keeping a
reference to the old group while it is destroyed and while DDP is dropped, and dropping that
reference last, held for 650 resizes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, Store

# torch.distributed re-exports the store classes without declaring them (mypy cannot see
# them there); _distributed_c10d is where they are defined.


def form(
    store: Store, gen: int, rank: int, world_size: int, backend: str, timeout_s: float
) -> None:
    """Collective over the new members: returns once all `world_size` of them are connected,
    or raises after `timeout_s` (one of them died or never came)."""
    dist.init_process_group(
        backend,
        store=PrefixStore(f"gen{gen}/", store),
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def dissolve(drop_ddp: Callable[[], None]) -> None:
    """Local: destroy the current default group, in the order that does not deadlock.
    `drop_ddp` must drop the last reference to the DDP wrapper."""
    if not dist.is_initialized():
        drop_ddp()
        return
    old = dist.group.WORLD  # keep the group alive until DDP is gone
    dist.destroy_process_group()
    drop_ddp()  # reference counting frees it here (measured; gc.collect() would cost 150 ms)
    del old  # gloo joins its threads here: ~20 ms, most of a shrink's pause
