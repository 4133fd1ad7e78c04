"""Broadcast a nested state (dicts, lists, tensors, numbers) from one rank to the others.

Two collectives whatever the state holds: the structure, with every tensor replaced by a
reference (shape, dtype, where it lived), goes as one pickled object; the tensor bytes go as
one flat uint8 buffer. One buffer instead of one broadcast per tensor because each
collective costs a round trip, and bytes instead of per-dtype buffers because every backend
can send uint8 (gloo cannot send bool, for one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_ALIGN = 16  # every tensor starts at a multiple of this in the buffer, so .view(dtype) works


@dataclass(frozen=True)
class _Ref:
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    on_accelerator: bool  # CUDA on the sender: put it on this rank's device, else on CPU


def _pack(obj: Any, tensors: list[torch.Tensor], size: list[int]) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        ref = _Ref(size[0], t.numel() * t.element_size(), tuple(t.shape), t.dtype, t.is_cuda)
        tensors.append(t)
        size[0] += -(-ref.nbytes // _ALIGN) * _ALIGN
        return ref
    if isinstance(obj, dict):
        return {k: _pack(v, tensors, size) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_pack(v, tensors, size) for v in obj)
    return obj


def _unpack(obj: Any, buf: torch.Tensor, device: torch.device) -> Any:
    if isinstance(obj, _Ref):
        raw = buf[obj.offset : obj.offset + obj.nbytes]
        t = raw.view(obj.dtype).reshape(obj.shape).clone()
        return t.to(device) if obj.on_accelerator else t.cpu()
    if isinstance(obj, dict):
        return {k: _unpack(v, buf, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_unpack(v, buf, device) for v in obj)
    return obj


def broadcast(state: Any, src: int, device: torch.device) -> Any:
    """Collective: every rank of the default group calls it; `state` matters only on `src`.
    Returns the state on every rank (on `src`, the very object given)."""
    rank = dist.get_rank()
    tensors: list[torch.Tensor] = []
    size = [0]
    skeleton = _pack(state, tensors, size) if rank == src else None
    header = [skeleton, size[0]]
    dist.broadcast_object_list(header, src=src, device=device)
    skeleton, total = header[0], int(header[1] or 0)
    if rank == src:
        buf = torch.empty(total, dtype=torch.uint8, device=device)
        offset = 0
        for t in tensors:
            flat = t.reshape(-1).contiguous().view(torch.uint8)
            buf[offset : offset + flat.numel()].copy_(flat)
            offset += -(-flat.numel() // _ALIGN) * _ALIGN
    else:
        buf = torch.empty(total, dtype=torch.uint8, device=device)
    if total:
        dist.broadcast(buf, src=src)
    if rank == src:
        return state
    return _unpack(skeleton, buf, device)
