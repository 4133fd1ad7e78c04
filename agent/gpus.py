"""GPU discovery behind one small interface.

`NvmlBackend` asks the NVIDIA driver (through nvidia-ml-py's `pynvml`); `FakeBackend` invents
GPUs for machines without any, so that the whole system can run on a laptop or in CI. A fake
GPU is never silent: `choose_backend` logs a WARNING whenever fake GPUs are in use, and the
agent tells the daemon (Register.fake_gpus) so that operators see it there too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import pynvml

log = logging.getLogger(__name__)

FAKE_MODEL = "fake GPU (no hardware)"
FAKE_MEMORY_BYTES = 80 * 1024**3


class NoGpusFound(RuntimeError):
    """No usable GPU on this machine; the message says why."""


@dataclass(frozen=True)
class GpuDevice:
    index: int  # NVML's index; CUDA_VISIBLE_DEVICES uses it (with CUDA_DEVICE_ORDER=PCI_BUS_ID)
    uuid: str
    model: str
    memory_bytes: int


@dataclass(frozen=True)
class GpuSample:
    """What a GPU is doing now (the agent's /metrics: docs/metrics.md)."""

    index: int
    utilization: float  # 0..1: the share of the last sample period a kernel ran
    memory_used_bytes: int
    memory_total_bytes: int


class GpuBackend(Protocol):
    name: str
    is_fake: bool

    def discover(self) -> list[GpuDevice]:
        """The GPUs of this machine; raises NoGpusFound when there are none."""
        ...

    def sample(self, indices: list[int]) -> tuple[list[GpuSample], int]:
        """Utilisation and memory of these GPUs now, and how many could not be read
        (those are left out). May block for a few milliseconds per GPU: called from
        the metrics thread, never from the agent's event loop."""
        ...


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class NvmlBackend:
    name = "nvml"
    is_fake = False

    def discover(self) -> list[GpuDevice]:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            # Without a driver this fails at once (LibraryNotFound / DriverNotLoaded): FIELD-NOTES.
            raise NoGpusFound(f"NVML could not start ({type(e).__name__}: {e})") from e
        try:
            count = pynvml.nvmlDeviceGetCount()
            devices = []
            for index in range(count):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                devices.append(
                    GpuDevice(
                        index=index,
                        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                        model=_text(pynvml.nvmlDeviceGetName(handle)),
                        memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    )
                )
        except pynvml.NVMLError as e:
            raise NoGpusFound(f"NVML failed while listing GPUs ({type(e).__name__}: {e})") from e
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                log.debug("nvmlShutdown failed", exc_info=True)
        if not devices:
            raise NoGpusFound("NVML works but reports 0 GPUs")
        return devices

    _initialized = False

    def sample(self, indices: list[int]) -> tuple[list[GpuSample], int]:
        # NVML stays initialised from the first sample on (nvmlInit costs more than a
        # whole sample); discover()'s own init and shutdown are reference-counted.
        if not self._initialized:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as e:
                log.debug("NVML could not start for a sample: %s", e)
                return [], len(indices)
            self._initialized = True
        out, failed = [], 0
        for index in indices:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError as e:
                log.debug("NVML could not sample GPU %d: %s", index, e)
                failed += 1
                continue
            out.append(GpuSample(index, rates.gpu / 100.0, int(memory.used), int(memory.total)))
        return out, failed


class FakeBackend:
    """N invented GPUs, the same every time for the same node (uuids name the node)."""

    name = "fake"
    is_fake = True

    def __init__(self, count: int, node: str) -> None:
        if count < 0:
            raise ValueError(f"fake GPU count must be >= 0, got {count}")
        self.count = count
        self.node = node

    def sample(self, indices: list[int]) -> tuple[list[GpuSample], int]:
        """Fixed values, never measured: idle, no memory used (the metrics say fake)."""
        return [GpuSample(i, 0.0, 0, FAKE_MEMORY_BYTES) for i in indices], 0

    def discover(self) -> list[GpuDevice]:
        return [
            GpuDevice(
                index=i,
                uuid=f"GPU-fake-{self.node}-{i}",
                model=FAKE_MODEL,
                memory_bytes=FAKE_MEMORY_BYTES,
            )
            for i in range(self.count)
        ]


def choose_backend(
    fake_gpus: int | None,
    fake_fallback: int | None,
    node: str,
    nvml: GpuBackend | None = None,
) -> tuple[GpuBackend, list[GpuDevice]]:
    """Pick the backend the flags ask for and discover the GPUs with it.

    --fake-gpus N: N fake GPUs, NVML is not even tried. Otherwise NVML; when it finds nothing,
    --fake-gpus-fallback N gives N fake GPUs, and without it NoGpusFound propagates (the CLI
    turns it into a clear error and a non-zero exit). `nvml` lets tests stand in for a driver.
    """
    if fake_gpus is not None:
        fake = FakeBackend(fake_gpus, node)
        log.warning("using %d FAKE GPUs (--fake-gpus): no NVIDIA hardware is used", fake_gpus)
        return fake, fake.discover()
    real = nvml if nvml is not None else NvmlBackend()
    try:
        devices = real.discover()
    except NoGpusFound as e:
        if fake_fallback is None:
            raise NoGpusFound(
                f"no GPUs found: {e}; pass --fake-gpus N (or --fake-gpus-fallback N) "
                "to run this agent with fake GPUs"
            ) from e
        fake = FakeBackend(fake_fallback, node)
        log.warning(
            "using %d FAKE GPUs (--fake-gpus-fallback, because %s): no NVIDIA hardware is used",
            fake_fallback,
            e,
        )
        return fake, fake.discover()
    for d in devices:
        log.info("GPU %d: %s, %s, %.1f GiB", d.index, d.uuid, d.model, d.memory_bytes / 1024**3)
    return real, devices
