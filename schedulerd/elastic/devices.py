"""Which device and backend a worker uses: its one GPU with NCCL, else the CPU with gloo.

The agent gives each worker exactly one GPU through CUDA_VISIBLE_DEVICES, so it is always
`cuda:0` inside the process.
"""

from __future__ import annotations

import os

import torch


def device() -> torch.device:
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def prepare(store_is_loopback: bool) -> None:
    """Process-wide settings needed before the first process group.

    Gloo picks its network interface from the machine's hostname, which on many hosts
    resolves to an address the peers cannot use (or to nothing). When the whole job is on
    this machine (the store is on a loopback address), loopback is right. Otherwise the
    job's environment decides (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), and the hostname's
    interface is used when it does not say.
    """
    if store_is_loopback and backend() == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
