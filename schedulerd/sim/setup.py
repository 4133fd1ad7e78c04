"""The simulated cluster and the consumer tree a run uses.

Consumers are one level under the root, one per workload consumer (a Philly
virtual cluster). Their shares, owned GPUs and the static baseline's partitions
all come from one split of the cluster: equal, or in proportion to each
consumer's GPU-time in the workload.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schedulerd.core import ROOT, ConsumerPath, ConsumerPolicy, Node, NodeName, Order, Policy


class Split(enum.Enum):
    EQUAL = "equal"
    GPU_TIME = "gputime"


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    gpus_per_node: int = 8

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def build(self) -> tuple[Node, ...]:
        width = len(str(self.nodes))
        gpus = tuple(range(self.gpus_per_node))
        return tuple(Node(name=NodeName(f"n{i:0{width}d}"), gpus=gpus) for i in range(self.nodes))


def split_weights(
    consumers: Sequence[str], split: Split, gpu_time: Mapping[str, float]
) -> dict[str, float]:
    """Each consumer's fraction of the cluster (summing to 1)."""
    if split is Split.EQUAL or sum(gpu_time.values()) <= 0:
        return {c: 1.0 / len(consumers) for c in consumers}
    total = sum(gpu_time.get(c, 0.0) for c in consumers)
    return {c: gpu_time.get(c, 0.0) / total for c in consumers}


def partition(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`total` GPUs divided by weight into whole GPUs (largest remainder), summing
    to exactly `total`."""
    exact = {c: total * w for c, w in weights.items()}
    whole = {c: int(x) for c, x in exact.items()}
    left = total - sum(whole.values())
    for c in sorted(exact, key=lambda c: (whole[c] - exact[c], c))[:left]:
        whole[c] += 1
    return whole


@dataclass(frozen=True)
class PolicySettings:
    owned_fraction: float = 1.0  # of the cluster, divided among consumers by the split
    min_runtime_s: float = 600.0
    grace_s: float = 30.0
    order: Order = Order.FIFO
    reclaim_patience_s: float = 0.0


def build_policy(
    weights: Mapping[str, float], cluster_gpus: int, settings: PolicySettings
) -> Policy:
    owned = partition(round(cluster_gpus * settings.owned_fraction), weights)
    consumers: dict[ConsumerPath, ConsumerPolicy] = {ROOT: ConsumerPolicy(path=ROOT)}
    for c in sorted(weights):
        path = ConsumerPath(c)
        consumers[path] = ConsumerPolicy(
            path=path,
            owned=owned[c],
            # A zero share would make a consumer that submitted nothing in the
            # window unable to borrow; keep a floor so every consumer can.
            share=max(weights[c], 1e-6),
            grace_s=settings.grace_s,
            min_runtime_s=settings.min_runtime_s,
            reclaim_patience_s=settings.reclaim_patience_s,
            order=settings.order,
        )
    return Policy(consumers=consumers)
