from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    name = "runtime"

    def ready(self) -> None:
        # The control plane imports this app; nothing here may import torch.
        from core import ports
        from runtime.ports import RuntimeDatasets, RuntimeInference, RuntimeModels

        ports.register(ports.DatasetsPort, RuntimeDatasets())
        ports.register(ports.ModelRegistryPort, RuntimeModels())
        ports.register(ports.InferencePort, RuntimeInference())
        # The record of runs that train on nodes (the assignments call it).
        from runtime import node_training

        ports.register(ports.TrainingPort, node_training)
