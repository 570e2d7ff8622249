"""The one module that talks to NVML (nvidia-ml-py, imported as ``pynvml``).

Everything else sees plain dataclasses: ``GpuInventory`` (what a GPU is) and
``GpuTelemetry`` (how it is doing). Tests pass a fake with pynvml's function shapes
as ``nvml=``; production uses the real module.

Without an NVIDIA driver ``nvmlInit`` raises ``NVMLError_LibraryNotFound``; this
module turns that into ``NvmlUnavailable`` with a message a person can act on.
Functions a GPU does not support (MIG on a GeForce card, ECC on a consumer board,
NVLink on a PCIe card) raise ``NVMLError_NotSupported``: those become ``None``.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

# XIDs that are caused by the application (illegal address, MMU fault from user code,
# a killed context, a preempted channel), not by the hardware: reported, but they do
# not degrade a node. Source: NVIDIA's XID catalog ("Xid Errors", r555).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68})

NO_DRIVER_MESSAGE = (
    "NVML is not available on this machine: the NVIDIA driver (libnvidia-ml.so.1) "
    "was not found. Install the NVIDIA driver, or describe the node's GPUs in a file "
    "and pass it with --inventory inventory.json."
)


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here (no driver, or it failed to start)."""


@dataclass(frozen=True, slots=True)
class GpuInventory:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    interconnect: str  # "nvlink" when any NVLink is up, else "pcie"
    nvlink_links: int
    pcie_generation: int | None
    pcie_width: int | None
    mig_mode: bool | None  # None: the GPU has no MIG

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class NodeInventory:
    driver_version: str
    cuda_version: str
    gpus: list[GpuInventory]

    def as_dict(self) -> dict[str, Any]:
        return {
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "gpus": [gpu.as_dict() for gpu in self.gpus],
        }


@dataclass(frozen=True, slots=True)
class GpuTelemetry:
    uuid: str
    utilization_pct: int | None = None
    memory_used_mib: int | None = None
    temperature_c: int | None = None
    power_mw: int | None = None
    ecc_corrected: int | None = None  # volatile single-bit count since driver load
    ecc_uncorrected: int | None = None  # volatile double-bit count since driver load
    xid_events: list[int] = field(default_factory=list)  # XIDs seen since last sample

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    # Older pynvml returned bytes; current returns str.
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """A session with NVML: ``with Nvml() as nvml: nvml.inventory()``."""

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        # Imported here: only the agent needs pynvml.
        self.lib: Any = nvml if nvml is not None else importlib.import_module("pynvml")
        self._events: Any = None

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        try:
            self.lib.nvmlInit()
        except self.lib.NVMLError_LibraryNotFound:
            raise NvmlUnavailable(NO_DRIVER_MESSAGE) from None
        except self.lib.NVMLError as exc:
            raise NvmlUnavailable(f"NVML failed to start: {exc}") from None
        self._events = self._register_xid_events()

    def stop(self) -> None:
        if self._events is not None:
            self._optional(self.lib.nvmlEventSetFree, self._events)
            self._events = None
        self._optional(self.lib.nvmlShutdown)

    def __enter__(self) -> Nvml:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers ------------------------------------------------------------

    def _optional(self, func: Any, *args: Any) -> Any:
        """``func(*args)``, or None when this GPU or driver does not support it."""
        try:
            return func(*args)
        except self.lib.NVMLError:
            return None

    def _handles(self) -> list[Any]:
        count = self.lib.nvmlDeviceGetCount()
        return [self.lib.nvmlDeviceGetHandleByIndex(index) for index in range(count)]

    def _nvlink_links(self, handle: Any) -> int:
        up = 0
        for link in range(getattr(self.lib, "NVML_NVLINK_MAX_LINKS", 18)):
            state = self._optional(self.lib.nvmlDeviceGetNvLinkState, handle, link)
            if state is None:
                break  # NotSupported (a PCIe board) or past the last link
            up += int(state == self.lib.NVML_FEATURE_ENABLED)
        return up

    def _register_xid_events(self) -> Any:
        event_set = self._optional(self.lib.nvmlEventSetCreate)
        if event_set is None:
            return None
        for handle in self._handles():
            self._optional(
                self.lib.nvmlDeviceRegisterEvents,
                handle,
                self.lib.nvmlEventTypeXidCriticalError,
                event_set,
            )
        return event_set

    def _drain_xids(self) -> dict[str, list[int]]:
        """XIDs NVML queued since the last call, by GPU UUID. Never blocks."""
        found: dict[str, list[int]] = {}
        if self._events is None:
            return found
        for _ in range(1000):  # bounded: a storm of XIDs must not stall a heartbeat
            try:
                data = self.lib.nvmlEventSetWait_v2(self._events, 0)
            except self.lib.NVMLError:  # NVMLError_Timeout: the queue is empty
                break
            uuid = _text(self.lib.nvmlDeviceGetUUID(data.device))
            found.setdefault(uuid, []).append(int(data.eventData))
        return found

    # --- what the agent reports --------------------------------------------

    def inventory(self) -> NodeInventory:
        cuda = self._optional(self.lib.nvmlSystemGetCudaDriverVersion)
        gpus = []
        for index, handle in enumerate(self._handles()):
            links = self._nvlink_links(handle)
            mig = self._optional(self.lib.nvmlDeviceGetMigMode, handle)
            gpus.append(
                GpuInventory(
                    index=index,
                    uuid=_text(self.lib.nvmlDeviceGetUUID(handle)),
                    name=_text(self.lib.nvmlDeviceGetName(handle)),
                    memory_total_mib=int(self.lib.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
                    interconnect="nvlink" if links else "pcie",
                    nvlink_links=links,
                    pcie_generation=self._optional(
                        self.lib.nvmlDeviceGetMaxPcieLinkGeneration, handle
                    ),
                    pcie_width=self._optional(self.lib.nvmlDeviceGetMaxPcieLinkWidth, handle),
                    # (current, pending); current is what runs now.
                    mig_mode=None if mig is None else bool(mig[0]),
                )
            )
        return NodeInventory(
            driver_version=_text(self.lib.nvmlSystemGetDriverVersion()),
            # 12040 -> "12.4"
            cuda_version="" if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
            gpus=gpus,
        )

    def telemetry(self) -> list[GpuTelemetry]:
        xids = self._drain_xids()
        samples = []
        for handle in self._handles():
            uuid = _text(self.lib.nvmlDeviceGetUUID(handle))
            rates = self._optional(self.lib.nvmlDeviceGetUtilizationRates, handle)
            memory = self._optional(self.lib.nvmlDeviceGetMemoryInfo, handle)
            samples.append(
                GpuTelemetry(
                    uuid=uuid,
                    utilization_pct=None if rates is None else int(rates.gpu),
                    memory_used_mib=None if memory is None else int(memory.used) // 2**20,
                    temperature_c=self._optional(
                        self.lib.nvmlDeviceGetTemperature, handle, self.lib.NVML_TEMPERATURE_GPU
                    ),
                    power_mw=self._optional(self.lib.nvmlDeviceGetPowerUsage, handle),
                    ecc_corrected=self._optional(
                        self.lib.nvmlDeviceGetTotalEccErrors,
                        handle,
                        self.lib.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                        self.lib.NVML_VOLATILE_ECC,
                    ),
                    ecc_uncorrected=self._optional(
                        self.lib.nvmlDeviceGetTotalEccErrors,
                        handle,
                        self.lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                        self.lib.NVML_VOLATILE_ECC,
                    ),
                    xid_events=xids.get(uuid, []),
                )
            )
        return samples
