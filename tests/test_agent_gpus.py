"""GPU discovery: the fake backend, NVML on a machine without a driver, and the flag rules."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent.gpus import (
    FAKE_MEMORY_BYTES,
    FAKE_MODEL,
    FakeBackend,
    GpuDevice,
    NoGpusFound,
    NvmlBackend,
    choose_backend,
)


class StandInNvml:
    """Plays a machine whose driver works (there is none here), for the rules that need one."""

    name = "nvml"
    is_fake = False

    def __init__(self, devices: list[GpuDevice]) -> None:
        self.devices = devices

    def discover(self) -> list[GpuDevice]:
        if not self.devices:
            raise NoGpusFound("NVML works but reports 0 GPUs")
        return self.devices


REAL_GPU = GpuDevice(0, "GPU-1234", "NVIDIA H100", 80 * 1024**3)


def _nvml_works_here() -> bool:
    try:
        NvmlBackend().discover()
    except NoGpusFound:
        return False
    return True


def test_fake_backend_is_deterministic_and_labelled() -> None:
    first = FakeBackend(3, "n1").discover()
    assert first == FakeBackend(3, "n1").discover()
    assert [g.uuid for g in first] == ["GPU-fake-n1-0", "GPU-fake-n1-1", "GPU-fake-n1-2"]
    assert [g.index for g in first] == [0, 1, 2]
    assert {g.model for g in first} == {FAKE_MODEL}
    assert {g.memory_bytes for g in first} == {FAKE_MEMORY_BYTES} == {80 * 1024**3}
    assert FakeBackend(3, "n1").is_fake


def test_fake_uuids_differ_between_nodes() -> None:
    a = {g.uuid for g in FakeBackend(2, "a").discover()}
    b = {g.uuid for g in FakeBackend(2, "b").discover()}
    assert not a & b


def test_fake_backend_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError):
        FakeBackend(-1, "n1")


@pytest.mark.skipif(_nvml_works_here(), reason="this machine has an NVIDIA driver")
def test_nvml_without_a_driver_raises_no_gpus_found() -> None:
    with pytest.raises(NoGpusFound, match="NVML"):
        NvmlBackend().discover()


def test_explicit_fake_gpus_never_ask_nvml(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    backend, gpus = choose_backend(4, None, "n1", nvml=StandInNvml([REAL_GPU]))
    assert backend.is_fake and len(gpus) == 4
    assert "4 FAKE GPUs (--fake-gpus)" in caplog.text


def test_nvml_gpus_win_over_the_fallback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    backend, gpus = choose_backend(None, 2, "n1", nvml=StandInNvml([REAL_GPU]))
    assert not backend.is_fake and gpus == [REAL_GPU]
    assert "FAKE" not in caplog.text


def test_fallback_when_nvml_finds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    backend, gpus = choose_backend(None, 2, "n1", nvml=StandInNvml([]))
    assert backend.is_fake and [g.uuid for g in gpus] == ["GPU-fake-n1-0", "GPU-fake-n1-1"]
    assert "2 FAKE GPUs (--fake-gpus-fallback" in caplog.text


def test_no_gpus_and_no_fallback_is_a_clear_error() -> None:
    with pytest.raises(NoGpusFound, match="--fake-gpus"):
        choose_backend(None, None, "n1", nvml=StandInNvml([]))


@pytest.mark.skipif(_nvml_works_here(), reason="this machine has an NVIDIA driver")
def test_real_nvml_here_falls_back_to_fakes() -> None:
    backend, gpus = choose_backend(None, 1, "n1")
    assert backend.is_fake and len(gpus) == 1


@pytest.mark.skipif(_nvml_works_here(), reason="this machine has an NVIDIA driver")
def test_agent_without_gpus_or_fake_flag_exits_with_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--node", "n1", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no GPUs found" in proc.stderr and "--fake-gpus" in proc.stderr
