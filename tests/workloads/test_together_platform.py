"""A Together user's everyday calls with the official ``together`` client against a live
server: whoami -> models.list with that project -> regions -> clusters.create on the
market -> list shows it Ready with its worker node -> delete ends the lease, billed ->
usage shows the GPU-hours. Another project's or organization's ids: 404 everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.workloads.conftest import openai_client, together_client
from tests.workloads.market import buyer_credit, provider_with_capacity

pytestmark = pytest.mark.django_db(transaction=True)


def _round() -> None:
    from marketplace.services import matching_round

    matching_round(wait=False)


def test_a_together_user_runs_a_cluster_and_sees_it_billed(cast, live_server):
    from together import Together

    from marketplace.models import Lease, Order

    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    key = cast.client(cast.buyer_a).raw_key

    me = together_client(live_server, key).whoami()
    assert me.type == "project_api_key"
    assert me.project.id == f"proj_{cast.buyer_a.pk}"
    client: Together = Together(
        base_url=live_server.url, api_key=key, project_id=me.project.id, max_retries=0
    )
    assert list(client.models.list()) == []  # no fine-tuned models yet: an empty page
    supported = list(client.models.list_supported())
    assert supported and supported[0].pricing.input is not None

    regions = client.clusters.list_regions().regions
    assert [r.name for r in regions] == ["us-east"]
    assert "H100_SXM" in regions[0].supported_instance_types

    created = client.clusters.create(
        cluster_name="trainer",
        billing_type="ON_DEMAND",
        gpu_type="H100_SXM",
        num_gpus=4,
        region="us-east",
        cuda_version="12.4",
        nvidia_driver_version="550",
        extra_body={"limit_price_per_gpu_hour": "3.00"},
    )
    assert created.status == "WaitingForDataPlaneNodes"
    order = Order.objects.get(pk=created.order_id)
    assert (order.gpus_per_node, order.node_count, order.duration_seconds) == (4, 1, None)
    assert order.gpu_models == ["h100-sxm-80gb"] and order.regions == ["us-east"]

    _round()
    listed = client.clusters.list().clusters
    assert [c.cluster_id for c in listed] == [created.cluster_id]
    ready = listed[0]
    assert ready.status == "Ready"
    assert len(ready.gpu_worker_nodes) == 1 and ready.gpu_worker_nodes[0].num_gpus == 4
    lease = Lease.objects.get(order=order)
    # the lease's price (the offer's ask), not the limit
    assert ready.price_per_gpu_hour == f"{lease.price_per_gpu_hour_micros / 1e6:.2f}"

    # half an hour of the lease has run (its billing window started then)
    Lease.objects.filter(pk=lease.pk).update(
        window_start=lease.window_start - timedelta(minutes=30)
    )
    deleted = client.clusters.delete(created.cluster_id)
    assert deleted.cluster_id == created.cluster_id
    lease.refresh_from_db()
    assert lease.state == Lease.State.ENDED and lease.billed_until is not None
    gone = client.clusters.retrieve(created.cluster_id)
    assert gone.status == "Deleting" and gone.gpu_worker_nodes == []
    assert client.clusters.list().clusters == []

    month = datetime.now(tz=UTC).strftime("%Y-%m")
    report = client.organization.usage.costs.list(month=month)
    gpu_lines = [
        item
        for window in report.data
        for item in window.line_items
        if item.attributes.get("lease_id") == str(lease.pk)
    ]
    assert lease.gpu_seconds_billed >= 4 * 1800
    assert len(gpu_lines) == 1
    assert gpu_lines[0].product_name == "GPU Clusters - GPU Hours"
    assert float(gpu_lines[0].quantity) == pytest.approx(lease.gpu_seconds_billed / 3600)
    assert float(gpu_lines[0].cost) == pytest.approx(lease.billed_micros / 1e6)
    assert gpu_lines[0].attributes["cluster_id"] == created.cluster_id


def test_what_the_order_book_refuses_comes_back_with_its_reason(cast, live_server):
    import together

    provider_with_capacity(cast.provider_a)
    key = cast.client(cast.buyer_b).raw_key  # no credit
    client = together_client(live_server, key)
    base = {
        "cluster_name": "c",
        "billing_type": "ON_DEMAND",
        "num_gpus": 4,
        "cuda_version": "12.4",
        "nvidia_driver_version": "550",
    }

    with pytest.raises(together.APIStatusError) as short:
        client.clusters.create(gpu_type="H100_SXM", region="us-east", **base)
    assert short.value.status_code == 402
    assert short.value.response.json()["error"]["details"]["missing_micros"] > 0

    with pytest.raises(together.BadRequestError) as unknown:
        client.clusters.create(gpu_type="GB200_SXM", region="us-east", **base)
    assert unknown.value.response.json()["error"]["param"] == "gpu_type"

    with pytest.raises(together.BadRequestError) as nowhere:
        client.clusters.create(gpu_type="H100_SXM", region="mars-1", **base)
    assert "us-east" in nowhere.value.response.json()["error"]["message"]

    with pytest.raises(together.BadRequestError) as ignored:
        client.clusters.create(gpu_type="H100_SXM", region="us-east", cluster_type="SLURM", **base)
    assert ignored.value.response.json()["error"]["param"] == "cluster_type"


def test_a_409_tells_the_clients_not_to_retry(cast, live_server):
    import together

    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    client = together_client(live_server, cast.client(cast.buyer_a).raw_key)
    created = client.clusters.create(
        cluster_name="fixed",
        billing_type="ON_DEMAND",
        gpu_type="H100_SXM",
        num_gpus=4,
        region="us-east",
        cuda_version="12.4",
        nvidia_driver_version="550",
    )
    retrying = client.with_options(max_retries=3)
    with pytest.raises(together.ConflictError) as refused:
        retrying.clusters.update(created.cluster_id, num_gpus=8)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "num_gpus" in refused.value.response.json()["error"]["message"]


def test_another_projects_ids_are_404_on_every_new_route(cast, live_server):
    import openai
    import together

    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    owner = together_client(live_server, cast.client(cast.buyer_a).raw_key)
    cluster = owner.clusters.create(
        cluster_name="mine",
        billing_type="ON_DEMAND",
        gpu_type="H100_SXM",
        num_gpus=4,
        region="us-east",
        cuda_version="12.4",
        nvidia_driver_version="550",
    )
    own_project = owner.whoami().project.id
    other = together_client(live_server, cast.client(cast.buyer_b).raw_key)

    for call in (
        lambda: other.models.list(project_id=own_project),
        lambda: other.models.retrieve("any", project_id=own_project),
        lambda: other.clusters.retrieve(cluster.cluster_id),
        lambda: other.clusters.update(cluster.cluster_id, num_gpus=4),
        lambda: other.clusters.delete(cluster.cluster_id),
        lambda: other.clusters.list(project_id=own_project),
        lambda: other.fine_tuning.delete("ft-nothing"),
        lambda: other.fine_tuning.list_metrics("ft-nothing"),
    ):
        with pytest.raises(together.NotFoundError):
            call()
    with pytest.raises(together.PermissionDeniedError):
        other.organization.usage.costs.list(organization_id=f"org_{cast.buyer_a.pk}")
    with pytest.raises(openai.NotFoundError):
        openai_client(live_server, cast.client(cast.buyer_b).raw_key).models.delete(
            "ft:tandem/tiny-llama:someone:abcd1234"
        )
    assert owner.clusters.retrieve(cluster.cluster_id).cluster_id == cluster.cluster_id


def test_fine_tune_metrics_delete_and_model_delete(cast, live_server):
    import openai
    from django.utils import timezone

    from core.models import Organization
    from marketplace.workloads.models import File as StoredFile
    from marketplace.workloads.models import FineTuneCheckpoint, FineTuneEvent, FineTuneJob

    org: Organization = cast.buyer_a
    now = timezone.now()
    stored = StoredFile.objects.create(
        public_id="file-metrics", organization=org, purpose="fine-tune", filename="t.jsonl"
    )

    def job(public_id: str, status: str, model: str | None) -> FineTuneJob:
        return FineTuneJob.objects.create(
            public_id=public_id,
            organization=org,
            model="tandem/tiny-llama",
            training_file=stored,
            seed=1,
            status=status,
            fine_tuned_model=model,
            currency="USD",
        )

    done = job("ft-done", "succeeded", "ft:tandem/tiny-llama:buyer-a:0000abcd")
    running = job("ft-running", "running", None)
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.0)):
        FineTuneEvent.objects.create(
            job=done,
            public_id=f"ev-{step}",
            created_at=now,
            type="training_step",
            message="step",
            data={"step": step, "loss": loss, "learning_rate": 0.001, "epoch": 1},
        )
    FineTuneEvent.objects.create(
        job=done,
        public_id="ev-e",
        created_at=now,
        type="eval",
        message="eval",
        data={"step": 3, "eval_loss": 1.2},
    )
    FineTuneCheckpoint.objects.create(job=done, public_id="ck-1", step=3, created_at=now)
    key = cast.client(org).raw_key
    client = together_client(live_server, key)

    metrics = client.fine_tuning.list_metrics("ft-done").metrics
    assert [m["global_step"] for m in metrics] == [1.0, 2.0, 3.0, 3.0]
    assert metrics[0]["train_loss"] == 2.0 and metrics[-1]["eval_loss"] == 1.2
    assert len(client.fine_tuning.list_metrics("ft-done", resolution=2).metrics) == 3

    import together

    with pytest.raises(together.ConflictError) as busy:
        client.fine_tuning.delete("ft-running")
    assert busy.value.response.headers["x-should-retry"] == "false"

    oa = openai_client(live_server, key)
    gone = oa.models.delete("ft:tandem/tiny-llama:buyer-a:0000abcd")
    assert gone.deleted is True
    done.refresh_from_db()
    assert done.fine_tuned_model is None and not done.checkpoints.exists()
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("ft:tandem/tiny-llama:buyer-a:0000abcd")

    assert "deleted" in client.fine_tuning.delete("ft-done").message
    assert not FineTuneJob.objects.filter(public_id="ft-done").exists()
    assert FineTuneJob.objects.filter(pk=running.pk).exists()


def test_a_cluster_list_reads_its_rows_in_two_queries_however_many_clusters(cast, client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from marketplace.together import clusters

    # given a buyer with one cluster leased (Ready, with its worker node) and five queued
    provider_with_capacity(cast.provider_a)
    buyer_credit(cast.buyer_a, 500_000_000)
    key = cast.client(cast.buyer_a).raw_key
    base = {"billing_type": "ON_DEMAND", "gpu_type": "H100_SXM", "region": "us-east"}
    limit = {"limit_price_per_gpu_hour": "3.00"}
    clusters.cluster_create(
        organization=cast.buyer_a, data={"cluster_name": "leased", "num_gpus": 4, **base, **limit}
    )
    _round()
    for n in range(5):
        clusters.cluster_create(
            organization=cast.buyer_a,
            data={"cluster_name": f"queued-{n}", "num_gpus": 8, **base, **limit},
        )

    # when the list is read through the API
    with CaptureQueriesContext(connection) as reads:
        answer = client.get("/v1/compute/clusters", HTTP_AUTHORIZATION=f"Bearer {key}")

    # then every cluster's shape is whole, from one read of the orders and one of the
    # leases (no column left out of the reads is fetched row by row)
    assert answer.status_code == 200
    listed = answer.json()["clusters"]
    assert len(listed) == 6
    ready = next(c for c in listed if c["cluster_name"] == "leased")
    assert ready["status"] == "Ready" and ready["gpu_worker_nodes"][0]["num_gpus"] == 4
    assert ready["cuda_version"] and ready["price_per_gpu_hour"]
    assert {c["status"] for c in listed if c is not ready} == {"WaitingForDataPlaneNodes"}
    tables = [q["sql"] for q in reads.captured_queries if "marketplace_" in q["sql"]]
    assert len(tables) == 2, tables
