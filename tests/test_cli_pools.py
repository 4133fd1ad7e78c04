"""`schedctl consumers` and `nodes` show pools (docs/pools.md)."""

from __future__ import annotations

from schedulerd.api.v1 import admin_pb2
from schedulerd.cli import format as fmt


def status(path: str, **pools: tuple[int, float, int]) -> admin_pb2.ConsumerStatus:
    return admin_pb2.ConsumerStatus(
        path=path,
        owned=sum(o for o, _, _ in pools.values()),
        entitlement=sum(e for _, e, _ in pools.values()),
        allocation=sum(a for _, _, a in pools.values()),
        lend=True,
        borrow=True,
        pools=[
            admin_pb2.PoolStatus(pool=p, owned=o, entitlement=e, allocation=a, gpus=16, share=1)
            for p, (o, e, a) in pools.items()
        ],
    )


def test_consumers_shows_every_pool_after_the_sum() -> None:
    resp = admin_pb2.ListConsumersResponse(
        total_gpus=32,
        consumers=[
            status("/", a100=(0, 16.0, 16), h100=(0, 16.0, 12)),
            status("/vision", a100=(4, 5.6, 6), h100=(8, 8.0, 8)),
        ],
    )
    text = fmt.consumers_table(resp)
    assert text.startswith("32 schedulable GPUs in 2 pools; all pools:")
    a100, h100 = text.index("pool a100: 16 schedulable GPUs"), text.index("pool h100: 16")
    assert a100 < h100
    h100_rows = text[h100:].splitlines()
    vision = next(line for line in h100_rows if line.split()[0] == "vision")
    assert vision.split()[1:] == ["8", "1", "-", "0", "8.0", "8"]


def test_one_pool_shows_one_table() -> None:
    resp = admin_pb2.ListConsumersResponse(
        total_gpus=8, consumers=[admin_pb2.ConsumerStatus(path="/", lend=True, borrow=True)]
    )
    assert "pool" not in fmt.consumers_table(resp)


def test_nodes_show_pool_and_gpu_type() -> None:
    node = admin_pb2.Node(
        name="gpu-01",
        pool="train",
        gpu_type="h100",
        gpus=[admin_pb2.Gpu(index=0, model="NVIDIA H100 80GB HBM3")],
    )
    header, row = fmt.nodes_table([node]).splitlines()[:2]
    assert header.split()[:4] == ["NODE", "STATE", "POOL", "TYPE"]
    assert row.split()[2:4] == ["train", "h100"]
