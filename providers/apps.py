from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"

    def ready(self) -> None:
        from core import ports
        from providers.permissions import AgentNodes

        ports.register("agent_nodes", AgentNodes())
