"""Where a job's GPUs go (SEMANTICS: the cycle, step 2; issue: placement).

Rules:
- A job that fits on one node (at most as many GPUs as the largest schedulable
  node has) is placed on one node only: GPUs of one node talk over NVLink/PCIe,
  and a split small job would be slow. Among nodes that fit, the one with the
  fewest free GPUs wins (best fit), so whole nodes stay free for large jobs.
- A larger job spans nodes: whole free nodes first (fewest nodes), then the
  remainder best-fit, again sparing whole nodes.

`FreeGpus` is the cycle's working copy of free GPUs, bucketed by free count so
that best fit costs O(GPUs per node), not O(nodes).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from schedulerd.core.model import GpuSlot, Node, NodeName


class FreeGpus:
    def __init__(
        self,
        nodes: Iterable[Node],
        held: Iterable[GpuSlot] = (),
        taken: Mapping[NodeName, Container[int]] | None = None,
    ) -> None:
        # Taken GPUs by node (`taken`, kept by the caller, or from `held`): a cycle
        # builds this for every GPU of the cluster, so it must not make a slot per GPU
        # (that was a third of a 2,000-GPU cycle).
        if taken is None:
            by_node: dict[NodeName, set[int]] = {}
            for s in held:
                by_node.setdefault(s.node, set()).add(s.index)
            taken = by_node
        self._free: dict[NodeName, list[int]] = {}
        self._size: dict[NodeName, int] = {}
        self._buckets: dict[int, dict[NodeName, None]] = {}
        self.largest_node = 0
        self.capacity = 0  # all GPUs of schedulable nodes, free or not
        self.total = 0  # free GPUs
        for node in sorted((n for n in nodes if n.schedulable), key=lambda n: n.name):
            self.largest_node = max(self.largest_node, len(node.gpus))
            self._size[node.name] = len(node.gpus)
            self.capacity += len(node.gpus)
            busy = taken.get(node.name)
            free = [i for i in node.gpus if i not in busy] if busy else list(node.gpus)
            free.sort()
            self._free[node.name] = free
            self.total += len(free)
            if free:
                self._buckets.setdefault(len(free), {})[node.name] = None

    def largest_block(self) -> int:
        """The most free GPUs on any one node."""
        return max((k for k, b in self._buckets.items() if b), default=0)

    def spans_nodes(self, n: int) -> bool:
        return n > self.largest_node

    def can_place(self, n: int) -> bool:
        if n <= 0:
            return False
        if self.spans_nodes(n):
            return n <= self.total
        return self._best_fit(n) is not None

    def place(self, n: int) -> tuple[GpuSlot, ...] | None:
        """Take n GPUs by the rules above, or None (and change nothing)."""
        if not self.can_place(n):
            return None
        if not self.spans_nodes(n):
            node = self._best_fit(n)
            assert node is not None
            return self._take(node, n)
        slots: list[GpuSlot] = []
        remaining = n
        while remaining > 0:
            biggest = self.largest_block()
            if biggest <= remaining:
                node = next(iter(self._buckets[biggest]))
                slots.extend(self._take(node, biggest))
                remaining -= biggest
            else:
                node = self._best_fit(remaining)
                assert node is not None
                slots.extend(self._take(node, remaining))
                remaining = 0
        return tuple(slots)

    def free_count(self, node: NodeName) -> int:
        free = self._free.get(node)
        return len(free) if free is not None else 0

    def free_on(self, node: NodeName) -> list[int]:
        return list(self._free.get(node, ()))

    def node_sizes(self) -> dict[NodeName, int]:
        """Each schedulable node's GPUs, free or not."""
        return dict(self._size)

    def nodes(self) -> list[NodeName]:
        """Schedulable nodes, by name."""
        return list(self._free)

    def hold(self, slots: list[GpuSlot]) -> None:
        """Take these free GPUs out of play for the rest of the cycle (held for a
        reclaim in progress: SEMANTICS: the cycle, step 3)."""
        for slot in slots:
            free = self._free[slot.node]
            if slot.index in free:
                before = len(free)
                free.remove(slot.index)
                self._move(slot.node, before, before - 1)
                self.total -= 1

    def place_near(self, nodes: list[NodeName]) -> GpuSlot | None:
        """One GPU, on the first of `nodes` that has one free (a growing job stays
        close to its workers), else best fit."""
        for node in nodes:
            if self._free.get(node):
                return self._take(node, 1)[0]
        target = self._best_fit(1)
        return None if target is None else self._take(target, 1)[0]

    def _move(self, node: NodeName, before: int, after: int) -> None:
        del self._buckets[before][node]
        if after:
            self._buckets.setdefault(after, {})[node] = None

    def _best_fit(self, n: int) -> NodeName | None:
        for k in sorted(self._buckets):
            if k >= n and self._buckets[k]:
                return next(iter(self._buckets[k]))
        return None

    def _take(self, node: NodeName, n: int) -> tuple[GpuSlot, ...]:
        free = self._free[node]
        before = len(free)
        taken, self._free[node] = free[:n], free[n:]
        self._move(node, before, before - n)
        self.total -= n
        return tuple(GpuSlot(node, i) for i in taken)
