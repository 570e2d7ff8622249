"""Reading the inputs of Together's dedicated-endpoint calls: names, update masks,
a deployment's hardware, model and placement, list pages (its scaling:
endpoint_scaling.py). Each refusal is a
400 naming the field; a field this market has no counterpart for is refused, never
ignored (marketplace/together/endpoints.py says which)."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet

from core.models import Organization
from marketplace.together import projects
from marketplace.together.instance_types import instance_type_parse
from marketplace.workloads.endpoint_names import bare_name
from marketplace.workloads.errors import invalid
from marketplace.workloads.inference import model_resolve
from providers.models import Offer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def known(data: dict[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise invalid(
                f"{where}{key} is not offered on this market's dedicated endpoints",
                param=f"{where}{key}",
            )


def name_of(data: dict[str, Any], organization: Organization, *, param: str = "name") -> str:
    raw = data.get("name")
    if not isinstance(raw, str) or not raw.strip():
        raise invalid(f"{param} is required", param=param, code="missing_required_parameter")
    name = bare_name(raw.strip(), organization)
    if not NAME.match(name):
        raise invalid(
            f"{param} must be 1 to 100 letters, digits, '.', '_' or '-' (optionally after "
            f"your project slug '{projects.project_slug(organization)}/')",
            param=param,
        )
    return name


def mask(update_mask: str | None, data: dict[str, Any], fields: dict[str, str]) -> set[str]:
    """The fields an update changes: those in ``update_mask`` (Together's or snake
    case), else those given. A field given but outside the mask is a 400."""
    given = {fields[key] for key in data if key in fields}
    if not update_mask:
        return given
    masked = set()
    for part in update_mask.split(","):
        part = part.strip()
        if part not in fields:
            raise invalid(
                f"update_mask names {part!r}, which cannot be updated", param="update_mask"
            )
        masked.add(fields[part])
    for key in data:
        if key in fields and fields[key] not in masked:
            raise invalid(f"{key} is given but not in update_mask", param=key)
    return masked


def hardware(data: dict[str, Any], organization: Organization) -> tuple[str, int]:
    config = data.get("config") or data.get("configId") or data.get("hardware")
    param = next((k for k in ("config", "configId", "hardware") if data.get(k)), "config")
    if not isinstance(config, str) or not config:
        raise invalid(
            "config is required: projects/<project id>/configs/<instance type id> (a hardware "
            "instance type of GET /v2/public/inference-instance-types)",
            param="config",
            code="missing_required_parameter",
        )
    own = f"projects/{projects.project_id(organization)}/configs/"
    if config.startswith("projects/"):
        if not config.startswith(own):
            raise invalid(f"config must be under {own}", param=param)
        config = config[len(own) :]
    return instance_type_parse(config, param=param)


def model(data: dict[str, Any], organization: Organization) -> tuple[str, str, str]:
    """(served model, base model, adapter path) of ``model`` (a resource name
    ``projects/<project>/models/<model id>``) or the deprecated ``modelId``."""
    if data.get("modelRevisionId"):
        raise invalid("model revisions are not offered: name the model", param="modelRevisionId")
    raw = data.get("model") or data.get("modelId")
    param = "model" if data.get("model") else "modelId"
    if not isinstance(raw, str) or not raw:
        raise invalid("model is required", param="model", code="missing_required_parameter")
    if raw.startswith("projects/"):
        _, _, rest = raw.partition("/models/")
        if not rest:
            raise invalid("model must be projects/<project>/models/<model id>", param=param)
        if "/revisions/" in rest:
            raise invalid("model revisions are not offered: name the model", param=param)
        raw = rest
    served = model_resolve(organization=organization, name=raw)
    if served.dedicated is not None:
        raise invalid(f"{raw} is a dedicated endpoint, not a model", param=param)
    return served.name, served.base_model, served.adapter_path


def region(data: dict[str, Any]) -> str:
    placement = data.get("placement")
    if placement is None:
        return ""
    if not isinstance(placement, dict) or set(placement) != {"inline"}:
        raise invalid(
            "placement must be {'inline': {'regions': [...]}}: saved placement profiles are "
            "not offered",
            param="placement",
        )
    inline = placement["inline"]
    if not isinstance(inline, dict):
        raise invalid("placement.inline must be an object", param="placement.inline")
    known(inline, ("regions", "constraint"), "placement.inline.")
    if inline.get("constraint") not in (None, "ENFORCEMENT_REQUIRED"):
        raise invalid(
            "placement.inline.constraint: only ENFORCEMENT_REQUIRED is offered (a replica's "
            "order names its region)",
            param="placement.inline.constraint",
        )
    regions = inline.get("regions") or []
    if not isinstance(regions, list) or len(regions) > 1:
        raise invalid(
            "placement.inline.regions names at most one region", param="placement.inline.regions"
        )
    if not regions:
        return ""
    region = regions[0]
    if not isinstance(region, str) or not Offer.objects.filter(region=region).exists():
        listed = sorted(set(Offer.objects.values_list("region", flat=True)))
        raise invalid(
            f"region {region!r} has no capacity on this market: one of {', '.join(listed)}",
            param="placement.inline.regions[0]",
        )
    return region


def page_args(params: Any) -> tuple[int, str | None, str]:
    """(limit, after, order) of a list call; ``filter`` is refused rather than ignored."""
    if params.get("filter"):
        raise invalid(
            "filter is not offered: list them all (pages of up to 100) and pick", param="filter"
        )
    raw = params.get("limit") or "50"
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise invalid("limit must be a whole number from 1 to 100", param="limit")
    order = (params.get("order_by") or "created_at desc").strip()
    field, _, direction = order.partition(" ")
    if field not in ("created_at", "updated_at") or direction.strip() not in ("", "asc", "desc"):
        raise invalid(
            "order_by must be created_at or updated_at, optionally followed by asc or desc",
            param="order_by",
        )
    prefix = "" if direction.strip() == "asc" else "-"
    return int(raw), params.get("after") or None, f"{prefix}{field}"


def page(
    rows: QuerySet[Any], *, limit: int, after: str | None, order: str
) -> tuple[list[Any], str | None]:
    """A page after the row whose public id is ``after``, and the next cursor."""
    ordered = list(rows.order_by(order, f"{order[0] if order[0] == '-' else ''}pk"))
    if after:
        ids = [row.public_id for row in ordered]
        if after not in ids:
            raise invalid("after is not a cursor of this list", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    chunk = ordered[:limit]
    return chunk, chunk[-1].public_id if len(ordered) > limit else None
