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
