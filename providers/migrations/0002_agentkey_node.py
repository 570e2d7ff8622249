"""Agent keys become their own scope and are bound to one node.

The scope column lives in core (core 0006); which keys are agent keys is known only
here (an AgentKey row), so the data part is this app's, keeping core free of providers.
A key that registered exactly one node is bound to it; a key that registered several
(allowed before) is left unbound: its next registration binds it, and the other nodes
need keys of their own."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Count


def mark_agent_keys(apps, schema_editor):
    AgentKey = apps.get_model("providers", "AgentKey")
    ApiKey = apps.get_model("core", "ApiKey")
    Node = apps.get_model("providers", "Node")
    ApiKey.objects.filter(pk__in=AgentKey.objects.values("api_key_id")).update(scope="agent")
    single = (
        Node.objects.filter(api_key_id__in=AgentKey.objects.values("api_key_id"))
        .values("api_key_id")
        .annotate(nodes=Count("id"))
        .filter(nodes=1)
        .values_list("api_key_id", flat=True)
    )
    for api_key_id in list(single):
        node_id = Node.objects.filter(api_key_id=api_key_id).values_list("id", flat=True).get()
        AgentKey.objects.filter(api_key_id=api_key_id).update(node_id=node_id)


def unmark_agent_keys(apps, schema_editor):
    AgentKey = apps.get_model("providers", "AgentKey")
    ApiKey = apps.get_model("core", "ApiKey")
    ApiKey.objects.filter(pk__in=AgentKey.objects.values("api_key_id")).update(scope="org")


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0006_apikey_scope"),
        ("providers", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="agentkey",
            name="node",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="agent_keys",
                to="providers.node",
            ),
        ),
        migrations.RunPython(mark_agent_keys, unmark_agent_keys),
    ]
