from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from providers.nvml import NO_DRIVER_MESSAGE, Nvml, NvmlUnavailable
from tests.providers.fake_nvml import FakeGpu, FakeNvml

ROOT = Path(__file__).resolve().parents[2]


def test_inventory_reports_what_nvml_says():
    fake = FakeNvml(
        [
            FakeGpu(uuid="GPU-1", nvlink_links=18, mig=(1, 1)),
            FakeGpu(
                uuid="GPU-2", name="NVIDIA L40S", memory_total_mib=46068, nvlink_links=0, mig=None
            ),
        ],
        driver="550.54.15",
        cuda=12040,
    )

    with Nvml(fake) as nvml:
        found = nvml.inventory()

    assert found.driver_version == "550.54.15"
    assert found.cuda_version == "12.4"
    first, second = found.gpus
    assert (first.uuid, first.name, first.memory_total_mib) == (
        "GPU-1",
        "NVIDIA H100 80GB HBM3",
        81559,
    )
    assert (first.interconnect, first.nvlink_links, first.mig_mode) == ("nvlink", 18, True)
    # A PCIe board without MIG: NVML says NotSupported, the adapter says pcie / None.
    assert (second.interconnect, second.nvlink_links, second.mig_mode) == ("pcie", 0, None)
    assert (second.pcie_generation, second.pcie_width) == (5, 16)
    assert not fake.initialized  # shut down on leaving the block


def test_telemetry_reads_each_gpu_and_drains_xids_once():
    fake = FakeNvml(
        [
            FakeGpu(
                uuid="GPU-1",
                utilization_pct=87,
                memory_used_mib=40_000,
                temperature_c=71,
                power_mw=650_000,
                ecc_corrected=3,
                ecc_uncorrected=1,
                pending_xids=[79, 48],
            ),
            FakeGpu(uuid="GPU-2", ecc_uncorrected=None),
        ]
    )

    with Nvml(fake) as nvml:
        first = nvml.telemetry()
        second = nvml.telemetry()

    gpu1, gpu2 = first
    assert (gpu1.utilization_pct, gpu1.memory_used_mib, gpu1.temperature_c, gpu1.power_mw) == (
        87,
        40_000,
        71,
        650_000,
    )
    assert (gpu1.ecc_corrected, gpu1.ecc_uncorrected, gpu1.xid_events) == (3, 1, [79, 48])
    assert (gpu2.ecc_corrected, gpu2.ecc_uncorrected) == (None, None)  # no ECC on the board
    assert second[0].xid_events == []
    assert fake.registered_events == [0, 1]


def test_a_missing_library_becomes_a_plain_message():
    with pytest.raises(NvmlUnavailable) as caught:
        Nvml(FakeNvml([], library_found=False)).start()

    assert str(caught.value) == NO_DRIVER_MESSAGE


def test_the_real_adapter_without_a_driver_raises_library_not_found():
    # This machine has no NVIDIA driver: the real pynvml raises NVMLError_LibraryNotFound.
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("an NVIDIA driver is installed here")

    with pytest.raises(NvmlUnavailable, match="NVIDIA driver"):
        Nvml().start()


def test_run_agent_without_a_driver_says_so_and_exits_non_zero():
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("an NVIDIA driver is installed here")

    # The agent never reaches the (unroutable) server: NVML fails first.
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--server",
            "http://127.0.0.1:9",
            "--key",
            "tdm_x_y",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )

    assert result.returncode == 3
    assert NO_DRIVER_MESSAGE in result.stderr
    assert "Traceback" not in result.stderr
