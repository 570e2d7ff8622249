"""Demo data for workloads: a finished fine-tune of the built-in tiny model by the
demo buyer, with its events and checkpoints, and a fine-tuned model to chat with,
served by an inference deployment of the buyer (``serve``).

``load(buyer=..., provider=...)`` needs the provider's offers listed (the supply
demo) and the buyer's credit granted. It runs the real path: upload and check the
sample dataset, price and create the job, a matching round leases the provider's
GPUs, and the runtime's training actor runs in this process (a few seconds on a
CPU). Safe to run again: a demo job that already succeeded is returned as it is.
"""

from __future__ import annotations

from pathlib import Path

import dramatiq

from core.followers import followers_run_until_idle
from core.models import Organization
from marketplace.workloads import ports as external
from marketplace.workloads import services
from marketplace.workloads.followers import WorkloadsFollower
from marketplace.workloads.models import Deployment, FineTuneJob

SAMPLE = Path(__file__).parent / "samples" / "adder.jsonl"
MODEL = "tandem/tiny-llama"
SUFFIX = "demo-adder"


def load(*, buyer: Organization, provider: Organization) -> FineTuneJob:
    done = FineTuneJob.objects.filter(
        organization=buyer, suffix=SUFFIX, status=FineTuneJob.Status.SUCCEEDED
    ).first()
    if done is not None:
        return done
    file = services.file_upload(
        organization=buyer,
        purpose="fine-tune",
        filename=SAMPLE.name,
        chunks=[SAMPLE.read_bytes()],
    )
    job = services.finetune_job_create(
        organization=buyer,
        request=services.JobRequest(
            model=MODEL,
            training_file=file.public_id,
            n_epochs=3,
            batch_size=4,
            n_checkpoints=2,
            suffix=SUFFIX,
            seed=42,
        ),
    )
    _lease_and_train(job)
    job.refresh_from_db()
    return job


def _lease_and_train(job: FineTuneJob) -> None:
    from marketplace.services import matching_round

    follower = WorkloadsFollower()
    matching_round()
    followers_run_until_idle([follower])  # LeaseStarted: the job is running
    job.refresh_from_db()
    if job.status != FineTuneJob.Status.RUNNING:
        raise RuntimeError(
            f"the demo job {job.public_id} found no GPUs (is the provider demo loaded?)"
        )
    # No worker runs while the demo loads: run the runtime's actor here, by name.
    spec = services.work_spec(job)
    dramatiq.get_broker().get_actor(external.TRAIN_ACTOR).fn(
        job.public_id, job.organization_id, spec
    )
    followers_run_until_idle([follower])


def serve(*, job: FineTuneJob) -> Deployment:
    """The inference deployment serving ``job``'s fine-tuned model to its buyer, made
    the way a first request makes one: the deployment and its managed order, a
    matching round leases a GPU, the follower records the lease, and the engine loads
    in this process (the deployment is then ready; a serving process loads its own
    engine on its first request). Needs the provider's offers listed and the job
    succeeded. Safe to run again: the buyer's deployment of the model, whatever its
    state since, is returned as it is (the demo's usage names it)."""
    from marketplace.services import matching_round

    found = (
        Deployment.objects.filter(organization=job.organization, model=job.fine_tuned_model)
        .order_by("pk")
        .first()
    )
    if found is not None:
        return found
    assert job.fine_tuned_model, "the demo serves the job it trained to the end"
    served = services.model_resolve(organization=job.organization, name=job.fine_tuned_model)
    # What deployment_acquire does first, without its wait for the lease: nothing
    # else runs matching or the follower while the demo loads, so they run here.
    deployment = services._deployment_live(organization=job.organization, served=served)
    matching_round()
    followers_run_until_idle([WorkloadsFollower()])  # LeaseStarted: the lease recorded
    deployment.refresh_from_db()
    if not deployment.lease_ref:
        raise RuntimeError(
            f"the demo deployment {deployment.public_id} found no GPUs "
            "(is the provider demo loaded?)"
        )
    return services.deployment_acquire(organization=job.organization, served=served)
