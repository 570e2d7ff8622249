from __future__ import annotations

import pytest

from providers import catalog


@pytest.mark.parametrize(
    ("nvml_name", "memory_mib", "slug"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "h100-sxm-80gb"),
        ("NVIDIA H100 PCIe", 81559, "h100-pcie-80gb"),
        ("NVIDIA H100 NVL", 95830, "h100-nvl-94gb"),
        ("NVIDIA H200", 143771, "h200-141gb"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-sxm-80gb"),
        ("NVIDIA A100-SXM4-40GB", 40960, "a100-sxm-40gb"),
        ("NVIDIA A100 80GB PCIe", 81920, "a100-pcie-80gb"),
        ("NVIDIA A100-PCIE-40GB", 40960, "a100-pcie-40gb"),
        ("NVIDIA L40S", 46068, "l40s-48gb"),
        ("NVIDIA L40", 46068, "l40-48gb"),
        ("NVIDIA L4", 23034, "l4-24gb"),
        ("NVIDIA GeForce RTX 4090", 24564, "rtx-4090-24gb"),
        ("NVIDIA A10G", 23028, "a10g-24gb"),
        ("NVIDIA RTX 6000 Ada Generation", 49140, "rtx-6000-ada-48gb"),
    ],
)
def test_nvml_names_map_to_the_catalog(nvml_name, memory_mib, slug):
    found = catalog.model_for_nvml_name(nvml_name, memory_mib)

    assert found is not None and found.slug == slug


def test_an_unknown_gpu_maps_to_nothing():
    assert catalog.model_for_nvml_name("Matrox G200eW", 16) is None


def test_h100_or_better_is_h100_sxm_and_faster_only():
    slugs = [model.slug for model in catalog.models_at_least("h100-sxm-80gb")]

    assert slugs == ["b200-180gb", "h200-141gb", "h100-sxm-80gb"]
    assert "a100-sxm-80gb" not in slugs and "h100-pcie-80gb" not in slugs


def test_price_per_unit_of_work_compares_models():
    # by hand: $2.49 on an H100 SXM (317) = 2,490,000 x 100 / 317 = 785,488.96... -> 785,489
    h100 = catalog.price_per_a100_hour_micros(
        price_per_gpu_hour_micros=2_490_000, slug="h100-sxm-80gb"
    )
    a100 = catalog.price_per_a100_hour_micros(
        price_per_gpu_hour_micros=1_100_000, slug="a100-sxm-80gb"
    )

    assert h100 == 785_489
    assert a100 == 1_100_000
    assert h100 < a100  # the dearer GPU is the cheaper work
    assert catalog.price_per_a100_hour_micros(price_per_gpu_hour_micros=1, slug="nope") is None
