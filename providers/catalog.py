"""The GPU catalog: what a GPU model is, found from the name NVML reports.

Buyers ask for "H100 or better"; that needs one ordering of models, and comparing
price per unit of work needs one figure per model. ``relative_performance`` is the
model's dense BF16/FP16 tensor throughput (datasheet TFLOPS, no sparsity) relative to
an A100 (312 TFLOPS = 100), rounded. It is a coarse proxy: it ignores memory
bandwidth, which is why H200 (same compute as H100 SXM, 1.4x the bandwidth) is given
a small bump so that "H100 or better" orders it above H100. Change the figures here
and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.money import rate_amount


@dataclass(frozen=True, slots=True)
class GpuModel:
    slug: str  # stable identifier used by offers and orders
    name: str  # what people call it
    memory_gib: int
    interconnect: str  # "nvlink" (SXM / NVL boards) or "pcie"
    relative_performance: int  # A100 = 100; see the module doc
    # Lower-cased fragments that must all appear in NVML's device name, and the
    # memory range (MiB, inclusive) that tells 40 GB from 80 GB boards apart.
    name_fragments: tuple[str, ...]
    memory_mib_range: tuple[int, int] = (0, 10**7)


CATALOG: tuple[GpuModel, ...] = (
    GpuModel("b200-180gb", "B200 180GB", 180, "nvlink", 721, ("b200",)),
    GpuModel("h200-141gb", "H200 141GB", 141, "nvlink", 330, ("h200",)),
    GpuModel("h100-nvl-94gb", "H100 NVL 94GB", 94, "nvlink", 300, ("h100", "nvl")),
    GpuModel("h100-pcie-80gb", "H100 PCIe 80GB", 80, "pcie", 242, ("h100", "pcie")),
    # NVML names the SXM board "NVIDIA H100 80GB HBM3": no "sxm" in it.
    GpuModel("h100-sxm-80gb", "H100 SXM 80GB", 80, "nvlink", 317, ("h100",)),
    GpuModel(
        "a100-pcie-80gb", "A100 PCIe 80GB", 80, "pcie", 100, ("a100", "pcie"), (60_000, 90_000)
    ),
    GpuModel("a100-sxm-80gb", "A100 SXM 80GB", 80, "nvlink", 100, ("a100",), (60_000, 90_000)),
    GpuModel("a100-pcie-40gb", "A100 PCIe 40GB", 40, "pcie", 95, ("a100", "pcie"), (0, 60_000)),
    GpuModel("a100-sxm-40gb", "A100 SXM 40GB", 40, "nvlink", 95, ("a100",), (0, 60_000)),
    GpuModel("rtx-6000-ada-48gb", "RTX 6000 Ada 48GB", 48, "pcie", 117, ("rtx 6000 ada",)),
    GpuModel("l40s-48gb", "L40S 48GB", 48, "pcie", 116, ("l40s",)),
    GpuModel("l40-48gb", "L40 48GB", 48, "pcie", 58, ("l40",)),
    GpuModel("rtx-4090-24gb", "RTX 4090 24GB", 24, "pcie", 53, ("rtx 4090",)),
    GpuModel("a10g-24gb", "A10G 24GB", 24, "pcie", 40, ("a10g",)),
    GpuModel("a10-24gb", "A10 24GB", 24, "pcie", 40, ("a10",)),
    GpuModel("l4-24gb", "L4 24GB", 24, "pcie", 39, ("l4",)),
    GpuModel("v100-32gb", "V100 32GB", 32, "nvlink", 40, ("v100",)),
    GpuModel("t4-16gb", "T4 16GB", 16, "pcie", 21, ("t4",)),
)

BY_SLUG: dict[str, GpuModel] = {model.slug: model for model in CATALOG}


def _words(name: str) -> str:
    return " " + name.lower().replace("-", " ").replace("_", " ") + " "


def model_for_nvml_name(name: str, memory_total_mib: int) -> GpuModel | None:
    """The catalog entry for a device NVML calls ``name``, or None when unknown.

    Fragments match whole words (so "l4" does not match "l40s"); the first entry in
    catalog order whose fragments and memory range fit wins, which is why the more
    specific entries (PCIe, NVL) come before the general one.
    """
    words = _words(name)
    for model in CATALOG:
        low, high = model.memory_mib_range
        if not low <= memory_total_mib <= high:
            continue
        if all(f" {fragment} " in words for fragment in model.name_fragments):
            return model
    return None


def model_get(slug: str) -> GpuModel | None:
    return BY_SLUG.get(slug)


def price_per_a100_hour_micros(*, price_per_gpu_hour_micros: int, slug: str) -> int | None:
    """A price per GPU-hour turned into a price per unit of work: what an hour of
    A100-equivalent throughput costs on this model (price x 100 / relative
    performance), rounded half-even to a micro-unit. None for a model not in the
    catalog. Lets buyers compare an H100 at $2.49 with an A100 at $1.10."""
    model = BY_SLUG.get(slug)
    if model is None:
        return None
    return rate_amount(price_per_gpu_hour_micros, 100, model.relative_performance)


def models_at_least(slug: str) -> list[GpuModel]:
    """``slug`` "or better": every model at least as fast, fastest first."""
    floor = BY_SLUG[slug].relative_performance
    found = [model for model in CATALOG if model.relative_performance >= floor]
    return sorted(found, key=lambda model: (-model.relative_performance, model.slug))
