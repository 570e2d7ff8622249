from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"

    def ready(self) -> None:
        from core import ports
        from core.tenancy import AgentNodes as CallerAgentNodes
        from providers.permissions import AgentNodes

        ports.register(CallerAgentNodes, AgentNodes())
