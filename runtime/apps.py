from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    name = "runtime"

    def ready(self) -> None:
        # The control plane imports this app; nothing here may import torch.
        from core import ports
        from core.tokens import TokensPort
        from runtime.ports import RuntimeDatasets, RuntimeModels, RuntimeTokens

        ports.register(ports.DatasetsPort, RuntimeDatasets())
        ports.register(ports.ModelRegistryPort, RuntimeModels())
        # Token counts for the inference gateway (the engines run on the nodes).
        ports.register(TokensPort, RuntimeTokens())
        # The record of runs that train on nodes (the assignments call it).
        from runtime import node_training

        ports.register(ports.TrainingPort, node_training)
