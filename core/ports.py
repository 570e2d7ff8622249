"""Ports: the interfaces an app needs from another across a real boundary.

Apps import the public services and selectors of the apps below them
(docs/architecture.md). A port remains only where the boundary is real: the node
runtime (dataset checks, models, inference, training run where torch is, not in the
control plane's imports), usage recorded from the runtime into metering, usage
provenance (metering asks the marketplace above it about the subjects it made), and
the node an agent key is bound to (core asks providers). The consumer declares the
``Protocol`` it calls; the owning app registers its implementation in
``AppConfig.ready()``, keyed by that protocol, and the consumer gets it back typed:

    # runtime/apps.py
    ports.register(DatasetsPort, RuntimeDatasets())

    # marketplace/workloads/ports.py
    ports.get(DatasetsPort).check(...)   # mypy knows it is a DatasetsPort

A port looked up before its provider registered raises ``LookupError`` naming it, so
a missing app in ``INSTALLED_APPS`` fails loudly at the first call rather than
silently doing nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

_Port = TypeVar("_Port")
_registry: dict[type, object] = {}


def register(port: type[_Port], implementation: _Port) -> None:
    """Register ``implementation`` for ``port`` (the newest registration wins, so a
    test may swap one in and restore the old one)."""
    _registry[port] = implementation


def get(port: type[_Port]) -> _Port:
    try:
        return cast(_Port, _registry[port])
    except KeyError:
        raise LookupError(
            f"port {port.__name__} has no implementation registered; is the app that "
            "provides it in INSTALLED_APPS?"
        ) from None


def registered(port: type) -> bool:
    return port in _registry


# --- Port protocols -------------------------------------------------------------
# Each consumer declares the Protocol it calls below, in its own section; the
# protocol is the key its implementation is registered under.


# --- workloads: what marketplace.workloads (the /v1/ API) needs from the runtime ---
# Registered by the runtime. The training itself goes through dramatiq actors by
# name; these are the answers the API needs within a request.


@dataclass(frozen=True, slots=True)
class DatasetCheck:
    """The verdict on one uploaded dataset. ``error`` names the line and field
    (``line 3: "messages" must alternate user/assistant``) when ``valid`` is false."""

    valid: bool
    format: str = ""  # text | messages | prompt_completion | preference | parquet
    examples: int = 0
    error: str = ""


class DatasetsPort(Protocol):
    """Port ``"datasets"``: the runtime's dataset checks (runtime/datasets.py)."""

    def check(self, *, path: str, purpose: str) -> DatasetCheck: ...

    def count_tokens(self, *, path: str, model: str) -> int:
        """Tokens of the whole file with ``model``'s tokenizer (what a job is billed on)."""
        ...


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    parameter_count: int
    context_length: int
    supports_full_training: bool = True
    # GPU memory one replica needs to serve it, in GiB (drives the order's GPUs).
    serving_memory_gib: int = 1


class ModelRegistryPort(Protocol):
    """Port ``"models"``: the runtime's model registry (runtime/registry.py)."""

    def base_models(self) -> list[ModelCard]: ...


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion: ``prompt`` (text completion) or ``messages`` (chat).

    ``json_schema`` (canonical JSON text) constrains the output to documents that
    schema accepts; ``json_schema_field`` names the request field it came from (for
    the 400 when it cannot be followed); ``json_schema_strict`` false lets the model
    add properties the schema does not forbid. ``tools`` are the function
    definitions the chat template shows the model (``{"type": "function",
    "function": {...}}``); ``tool_choice`` (none | auto | required | function) is how
    the API reads the answer: required and function constrain it to a call (through
    ``json_schema``), auto reads a call when the text is one. ``parallel_tool_calls``
    (OpenAI's default: true) lets an answer be several calls (a JSON list of them);
    false keeps it to one."""

    prompt: str | None = None
    messages: list[dict] | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json_schema: str | None = None
    json_schema_field: str = "response_format"
    json_schema_strict: bool = True
    tools: list[dict] | None = None
    tool_choice: str = "none"
    parallel_tool_calls: bool = True


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """One L2-normalized vector per input, in order, and the tokens read."""

    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class SampledToken:
    """One token the engine sampled: its id, its own text (an end token's is its
    literal, e.g. ``</s>``; a token that ends inside a UTF-8 character has none, the
    one completing it carries the character), whether it is special (an end token),
    and its log-probability under the distribution it was drawn from (see
    runtime/inference.py, ``Engine._sample``)."""

    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """A piece of a streamed completion; the last one has ``finish_reason`` and the
    exact token counts. ``token``: the sampled token this piece came with, when the
    caller asked for one chunk per token."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token: SampledToken | None = None


# --- usage (consumer: runtime; provider: metering) -------------------------------
# The runtime reports what it used (training and evaluation tokens per step, prompt
# and completion tokens per request, GPU-seconds per lease) in-process through this
# port; a remote node sends the same records to POST /api/v1/usage/batch instead.
# Ids must stay the same when work is retried (``f"{job}:{step}:train"``): metering
# de-duplicates on them, so a resumed job is never billed twice for one step.


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One usage event, in metering's schema (metering/schema.py) but made only of
    plain values, so a producer need not import metering."""

    id: str
    source: str
    type: str  # tokens.{training,evaluation,prompt,completion} or gpu.seconds
    organization_id: int
    subject_kind: str  # job | deployment | lease
    subject_id: str
    time: datetime
    quantity: int
    dimensions: dict[str, str | int] = field(default_factory=dict)


class UsagePort(Protocol):
    def record(self, records: Sequence[UsageRecord]) -> list[str]:
        """Store ``records``; one status per record, in order: ``accepted``,
        ``duplicate`` (seen before: not counted again) or ``rejected: <reason>``."""
        ...


# --- usage provenance (consumer: metering; provider: marketplace) ----------------
# Registered by marketplace (marketplace/provenance.py). Usage is
# billed only for what the platform's own records prove happened: GPU-seconds on a
# lease it made, tokens of a job or deployment it runs. Metering asks here, once per
# subject kind per batch, for the facts of the subjects a batch names; it judges the
# events against them itself (who sent them, when, at what price). Subject ids are
# the usage subjects (``lease-<id>``, a job's or deployment's public id); an id not
# found is absent from the answer.


@dataclass(frozen=True, slots=True)
class LeaseFacts:
    """What a lease's GPU-seconds are billed by: its buyer, its provider and node,
    its GPUs' model and count, its price, and its live interval ``[started_at,
    ended_at]`` (``started_at`` None: not started; ``ended_at`` None: still running).
    Its GPU-seconds are bounded by ``gpu_count`` × the live seconds."""

    subject_id: str
    organization_id: int
    provider_organization_id: int
    node_id: int
    gpu_model: str
    price_micros_per_hour: int
    started_at: datetime | None
    ended_at: datetime | None
    gpu_count: int = 1


@dataclass(frozen=True, slots=True)
class WorkloadFacts:
    """A fine-tune job or inference deployment: whose it is (``organization_id`` None:
    a platform deployment serving a base model to every buyer)."""

    subject_kind: str  # job | deployment
    subject_id: str
    organization_id: int | None


class UsageProvenancePort(Protocol):
    def leases(self, *, subject_ids: Sequence[str]) -> dict[str, LeaseFacts]:
        """The leases named, by subject id; one query."""
        ...

    def workloads(
        self, *, job_ids: Sequence[str], deployment_ids: Sequence[str]
    ) -> dict[tuple[str, str], WorkloadFacts]:
        """The jobs and deployments named, by (kind, subject id); one query per kind."""
        ...


# --- training: the runtime's record of a run on a node, for the assignments ------
# Registered by the runtime (runtime/node_training.py). The node's agent
# trains; the control plane records what it reports. Every call joins the caller's
# transaction (the report that carries it).


class TrainingPort(Protocol):
    def training_plan(self, *, spec: dict[str, Any]) -> dict[str, int]:
        """Rows, tokens and steps of a work spec, counted from its dataset here."""
        ...

    def node_run_submit(self, *, spec: dict[str, Any]) -> None: ...

    def node_run_claimed(self, *, job_id: str, attempt: int, node_id: int) -> None: ...

    def node_run_started(self, *, job_id: str, attempt: int, details: dict[str, Any]) -> None: ...

    def node_run_stepped(
        self, *, job_id: str, attempt: int, report: dict[str, Any], plan: dict[str, int]
    ) -> None: ...

    def node_run_evaluated(
        self, *, job_id: str, attempt: int, step: int, eval_loss: float, plan: dict[str, int]
    ) -> None: ...

    def node_run_checkpointed(
        self, *, job_id: str, attempt: int, step: int, location: str, final: bool
    ) -> None: ...

    def node_run_succeeded(
        self,
        *,
        job_id: str,
        attempt: int,
        steps: int,
        final_loss: float | None,
        model_location: str,
        merged_location: str,
    ) -> None: ...

    def node_run_failed(
        self, *, job_id: str, attempt: int, error: str, will_retry: bool
    ) -> None: ...

    def node_run_stopped(self, *, job_id: str, attempt: int) -> None: ...

    def node_run_cancel(self, *, job_id: str) -> None: ...

    def artifact_unpack(self, *, archive: Any, sha256: str) -> str: ...
