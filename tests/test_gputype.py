"""GPU types from NVML's model names (schedulerd/gputype.py): the default pool of a node."""

from __future__ import annotations

import pytest

from schedulerd.gputype import gpu_type, node_gpu_type


@pytest.mark.parametrize(
    ("model", "short"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-PCIE-40GB", "a100"),
        ("Tesla V100-SXM2-16GB", "v100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA RTX A6000", "a6000"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("Tesla T4", "t4"),
        ("fake GPU (no hardware)", ""),
        ("", ""),
    ],
)
def test_gpu_type_is_the_chip(model: str, short: str) -> None:
    assert gpu_type(model) == short


def test_a_node_of_mixed_gpus_has_no_single_type() -> None:
    assert node_gpu_type(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]) == "h100"
    assert node_gpu_type(["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]) == ""
    assert node_gpu_type([]) == ""
