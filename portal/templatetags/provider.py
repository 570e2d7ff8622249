"""The provider pages' quantities as people read them: a catalog slug as the GPU's
name, a share as a percentage, memory in GiB, power in watts (all from integers)."""

from __future__ import annotations

from django import template

from providers import catalog

register = template.Library()


@register.filter
def gpu_model_name(slug: str) -> str:
    model = catalog.model_get(slug)
    return model.name if model is not None else slug


@register.filter
def percent(share: float | None) -> str:
    """``0.99875`` → ``99.9 %``; none → an em dash (nothing to divide yet)."""
    if not isinstance(share, int | float):
        return "—"
    return f"{share * 100:.1f} %"


@register.filter
def gib(mib: int | None) -> str:
    if not isinstance(mib, int):  # no sample (the template passes "" then)
        return "—"
    tenths = (int(mib) * 10 + 512) // 1024
    return f"{tenths // 10}.{tenths % 10} GiB"


@register.filter
def watts(milliwatts: int | None) -> str:
    if not isinstance(milliwatts, int):
        return "—"
    return f"{(int(milliwatts) + 500) // 1000} W"


MEASUREMENTS = ("utilization_pct", "memory_used_mib", "temperature_c", "power_mw")


def _measured(gpu: object) -> bool:
    sample = getattr(gpu, "sample", None)  # absent: the GPU never reported
    return sample is not None and any(getattr(sample, m) is not None for m in MEASUREMENTS)


@register.filter
def measured(gpu: object) -> bool:
    """Whether the GPU's latest sample holds any measurement (an inventory file's
    heartbeats say the node is alive and measure nothing)."""
    return _measured(gpu)


@register.filter
def any_measured(gpus: list) -> bool:
    return any(_measured(gpu) for gpu in gpus)
