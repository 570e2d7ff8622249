"""Demo data for workloads: a finished fine-tune of the built-in tiny model by the
demo buyer, with its events and checkpoints, and a fine-tuned model to chat with,
served by an inference deployment of the buyer (``serve``) whose engine runs on the
leased node, in ``make run``'s agent.

``load(buyer=..., provider=...)`` needs the provider's offers listed (the supply
demo) and the buyer's credit granted. It runs the real path: upload and check the
sample dataset, price and create the job, a matching round leases the provider's
GPUs (on the demo node, northlake-gpu-01), and the job's training is queued for
that node. Nothing trains in this process: it serves the API on a loopback port
for a moment (a WSGI server thread) and runs the node agent's own train code
(providers.agent_train) against it with the demo node's agent key, which claims
the assignment, runs ``python -m runtime.launch`` as a subprocess (a few seconds
on a CPU), reports its steps and uploads its checkpoints and model, exactly as
``make run``'s agent would. Safe to run again: a demo job that already succeeded
is returned as it is.

``continued(job=...)`` is a second fine-tune that starts from the first one's final
checkpoint (Together's ``from_checkpoint``, marketplace/workloads/checkpoints.py):
created through the same service as ``POST /v1/fine-tunes`` with
``from_checkpoint``, so it inherits the base model and LoRA shape and trains the
sample for one more epoch from the first job's adapter. It is left queued for the
market, not trained here: the demo's next matching round leases its GPU and queues
its training for the leased node, which ``make run``'s agent runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.followers import followers_run_until_idle
from core.models import Organization
from marketplace.workloads import batches, inference, jobs
from marketplace.workloads import files as workload_files
from marketplace.workloads.followers import WorkloadsFollower
from marketplace.workloads.models import Batch, Deployment, FineTuneJob

SAMPLE = Path(__file__).parent / "samples" / "adder.jsonl"
MODEL = "tandem/tiny-llama"
SUFFIX = "demo-adder"
CONTINUED_SUFFIX = "demo-adder-more"


def load(*, buyer: Organization, provider: Organization) -> FineTuneJob:
    done = FineTuneJob.objects.filter(
        organization=buyer, suffix=SUFFIX, status=FineTuneJob.Status.SUCCEEDED
    ).first()
    if done is not None:
        return done
    file = workload_files.file_upload(
        organization=buyer,
        purpose="fine-tune",
        filename=SAMPLE.name,
        chunks=[SAMPLE.read_bytes()],
    )
    job = jobs.finetune_job_create(
        organization=buyer,
        request=jobs.JobRequest(
            model=MODEL,
            training_file=file.public_id,
            n_epochs=3,
            batch_size=4,
            n_checkpoints=2,
            suffix=SUFFIX,
            seed=42,
        ),
    )
    _lease_and_train(job, provider)
    job.refresh_from_db()
    if job.status != FineTuneJob.Status.SUCCEEDED:
        raise RuntimeError(f"the demo job {job.public_id} ended {job.status}: {job.error}")
    return job


def continued(*, job: FineTuneJob) -> FineTuneJob:
    """A fine-tune of the buyer's that continues from ``job``'s final checkpoint (the
    module doc says how it runs). Needs ``job`` succeeded (``load``). Safe to run
    again: the demo's continued job, whatever its state since, is returned as it is."""
    found = (
        FineTuneJob.objects.filter(organization=job.organization, suffix=CONTINUED_SUFFIX)
        .order_by("pk")
        .first()
    )
    if found is not None:
        return found
    return jobs.finetune_job_create(
        organization=job.organization,
        request=jobs.JobRequest(
            # The base model, training type and LoRA shape are the checkpoint's.
            model="",
            training_type="",
            lora_trainable_modules="",
            training_file=job.training_file.public_id,
            n_epochs=1,
            batch_size=4,
            n_checkpoints=1,
            suffix=CONTINUED_SUFFIX,
            seed=43,
            from_checkpoint=job.public_id,  # its last checkpoint: the final one
        ),
    )


def _train_on_the_demo_node(job: FineTuneJob, provider: Organization) -> None:
    """The demo node's agent, for one run: claim the job's train assignment over
    HTTP and run it to its end (see the module doc)."""
    import tempfile
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    from marketplace.assignments.models import Assignment
    from providers import services as supply_services
    from providers.agent import Client
    from providers.agent_drivers import SubprocessDriver
    from providers.agent_runs import WorkRoot
    from providers.agent_train import TrainSupervisor

    assignment = Assignment.objects.select_related("node").get(
        kind=Assignment.Kind.TRAIN, workload_id=job.public_id, state=Assignment.State.QUEUED
    )
    # The leased node's agent key for this one run (make run's agent runs
    # northlake-gpu-01; the market may lease the job on another node).
    key = supply_services.agent_key_create(
        organization=provider,
        name=f"demo training on {assignment.node.hostname}",
        node=assignment.node,
    ).raw_key

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    application = get_wsgi_application()

    def loopback(environ: dict, start_response):  # type: ignore[no-untyped-def,type-arg]
        # Plain HTTP on loopback, for this process only: not a reason to redirect.
        environ["wsgi.url_scheme"] = "https"
        return application(environ, start_response)

    server = make_server("127.0.0.1", 0, loopback, server_class=Server, handler_class=Quiet)
    serving = threading.Thread(target=server.serve_forever, name="demo-api", daemon=True)
    serving.start()
    try:
        client = Client(server=f"http://127.0.0.1:{server.server_port}", key=key)
        claim = client.post(
            f"/api/v1/agent/nodes/{assignment.node_id}/assignments/{assignment.pk}/claim", {}
        )
        with tempfile.TemporaryDirectory(prefix="tandem-demo-node-") as work:
            run = TrainSupervisor(
                client=client,
                node_id=assignment.node_id,
                claim=claim,
                root=WorkRoot(work),
                driver=SubprocessDriver(),
                run_as=None,
                node_env={"TANDEM_MODEL_DIR": str(settings.RUNTIME_MODEL_DIR)},
            )
            run.start()
            run.join()
    finally:
        server.shutdown()
        server.server_close()


def _lease_and_train(job: FineTuneJob, provider: Organization) -> None:
    from marketplace.services import matching_round

    follower = WorkloadsFollower()
    matching_round()
    followers_run_until_idle([follower])  # LeaseStarted: the job's training is queued
    job.refresh_from_db()
    if job.status != FineTuneJob.Status.RUNNING:
        raise RuntimeError(
            f"the demo job {job.public_id} found no GPUs (is the provider demo loaded?)"
        )
    _train_on_the_demo_node(job, provider)
    followers_run_until_idle([follower])  # the run's events: the job succeeded


def serve(*, job: FineTuneJob) -> Deployment:
    """The inference deployment serving ``job``'s fine-tuned model to its buyer, made
    the way a first request makes one: the deployment and its managed order, a
    matching round leases a GPU, and the follower records the lease, which queues the
    deployment's engine for the leased node (a serve assignment). Nothing loads in
    this process: ``make run``'s agent (the demo node's) claims it when it starts,
    loads the engine on the node, and the first request finds the deployment ready.
    Needs the provider's offers listed and the job succeeded. Safe to run again: the
    buyer's deployment of the model, whatever its state since, is returned as it is
    (the demo's usage names it)."""
    from marketplace.services import matching_round

    found = (
        Deployment.objects.filter(organization=job.organization, model=job.fine_tuned_model)
        .order_by("pk")
        .first()
    )
    if found is not None:
        return found
    assert job.fine_tuned_model, "the demo serves the job it trained to the end"
    served = inference.model_resolve(organization=job.organization, name=job.fine_tuned_model)
    # What deployment_acquire does first, without its wait for the node's engine:
    # nothing else runs matching or the follower while the demo loads, so they run here.
    deployment = inference.deployment_live(organization=job.organization, served=served)
    matching_round()
    followers_run_until_idle([WorkloadsFollower()])  # LeaseStarted: the engine is queued
    deployment.refresh_from_db()
    if not deployment.lease_ref:
        raise RuntimeError(
            f"the demo deployment {deployment.public_id} found no GPUs "
            "(is the provider demo loaded?)"
        )
    return deployment


BATCH_QUESTIONS = [f"What is {a} plus {b}?" for a, b in [(1, 2), (2, 5), (3, 3), (4, 8), (6, 7)]]


def batch(*, buyer: Organization) -> Batch:
    """A small OpenAI batch of the buyer's (five questions to the tiny model), run on
    interruptible capacity at the batch discount. Created here, run by ``make run``:
    the matching loop finds it without a runner and starts one, whose deployment's
    interruptible order leases spare GPUs on the demo node; the node's agent serves
    it. Safe to run again: the demo's batch is returned as it is."""
    found = Batch.objects.filter(organization=buyer, metadata__demo="batch").first()
    if found is not None:
        return found
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"question-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 16,
                    "seed": n,
                },
            }
        )
        + "\n"
        for n, question in enumerate(BATCH_QUESTIONS)
    )
    file = workload_files.file_upload(
        organization=buyer, purpose="batch", filename="questions.jsonl", chunks=[lines.encode()]
    )
    return batches.batch_create(
        organization=buyer,
        input_file_id=file.public_id,
        endpoint="/v1/chat/completions",
        completion_window=batches.COMPLETION_WINDOW,
        metadata={"demo": "batch"},
    )
