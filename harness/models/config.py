"""The ``model`` section of a config and the registry of models that ``model.name`` names (lazy:
validating a config imports no torch)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from harness.core.registry import Registry
from harness.core.schema import Section, registered

MODELS = Registry(
    "model.name",
    "model",
    "a torch.nn.Module class or a function returning one, called with num_classes and model.kwargs: "
    "./my_models.py:WideNet, my_models:WideNet",
    namespaces={
        "torchvision/": (
            "harness.models.builders:torchvision_model",
            "any classifier of torchvision.models, untrained (torchvision/resnet50); model.kwargs go to it",
        )
    },
)
MODELS.add(
    "resnet18",
    "harness.models.builders:resnet18",
    "ResNet18 for small images (3x3 stem, no max-pool); model.width channels in its first stage",
    native=True,
)


class ModelConfig(Section):
    name: Annotated[str, registered(MODELS)] = "resnet18"
    width: int = Field(64, ge=1, le=4096)  # resnet18's first-stage channels (64: the standard 11.2M parameters)
    # Keyword arguments of the model's constructor: a plug-in's own, or a torchvision model's.
    kwargs: dict[str, Any] = Field(default_factory=dict)
