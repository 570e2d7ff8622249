"""A stand-in for ``pynvml`` with its function shapes, for driving providers.nvml.

Errors are pynvml's own classes, so the adapter's ``except`` clauses are exercised
as they are against the real library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total_mib: int = 81559
    nvlink_links: int = 18  # 0: a PCIe board (NVLink calls say NotSupported)
    mig: tuple[int, int] | None = (0, 0)  # None: no MIG on this GPU (NotSupported)
    utilization_pct: int = 0
    memory_used_mib: int = 0
    temperature_c: int = 35
    power_mw: int = 70_000
    ecc_corrected: int = 0
    ecc_uncorrected: int | None = 0  # None: no ECC on this board (NotSupported)
    pending_xids: list[int] = field(default_factory=list)


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
    NVML_NVLINK_MAX_LINKS = pynvml.NVML_NVLINK_MAX_LINKS
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_MEMORY_ERROR_TYPE_CORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        library_found: bool = True,
    ) -> None:
        self.gpus = gpus
        self.driver = driver
        self.cuda = cuda
        self.library_found = library_found
        self.initialized = False
        self.registered_events: list[int] = []

    def _not_supported(self) -> Exception:
        return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # lifecycle
    def nvmlInit(self) -> None:
        if not self.library_found:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    # system
    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    # devices: a handle is the index
    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle].name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        gpu = self.gpus[handle]
        total, used = gpu.memory_total_mib * 2**20, gpu.memory_used_mib * 2**20
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetNvLinkState(self, handle: int, link: int) -> int:
        if link >= self.gpus[handle].nvlink_links:
            raise self._not_supported()
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: int) -> int:
        return 5

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: int) -> int:
        return 16

    def nvmlDeviceGetMigMode(self, handle: int) -> tuple[int, int]:
        mig = self.gpus[handle].mig
        if mig is None:
            raise self._not_supported()
        return mig

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=self.gpus[handle].utilization_pct, memory=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self.gpus[handle].temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self.gpus[handle].power_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter: int) -> int:
        gpu = self.gpus[handle]
        if gpu.ecc_uncorrected is None:
            raise self._not_supported()
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return gpu.ecc_uncorrected
        return gpu.ecc_corrected

    # events
    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlEventSetFree(self, event_set: str) -> None:
        pass

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, event_set: str) -> None:
        self.registered_events.append(handle)

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> Any:
        for handle, gpu in enumerate(self.gpus):
            if gpu.pending_xids:
                return SimpleNamespace(
                    device=handle,
                    eventType=pynvml.nvmlEventTypeXidCriticalError,
                    eventData=gpu.pending_xids.pop(0),
                )
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)


def h100_node(count: int = 8, prefix: str = "GPU-aaaa") -> FakeNvml:
    return FakeNvml([FakeGpu(uuid=f"{prefix}-{index:04d}") for index in range(count)])
