"""The ``model`` section of a config and the registry of models that ``model.name`` names (lazy:
validating a config imports no torch)."""

from __future__ import annotations

from collections.abc import Mapping
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


def describe_model(model: Mapping[str, Any]) -> str:
    """A ``model`` section in words, as reports and messages name it: ``resnet18 (width 16)``."""
    name = str(model.get("name", "?"))
    return f"{name} (width {model['width']})" if name == "resnet18" and "width" in model else name


class ModelConfig(Section):
    name: Annotated[str, registered(MODELS)] = Field(
        "resnet18",
        description=(
            "`resnet18` (ResNet18 for 32x32 inputs: 3x3 stem, no max-pool), or `torchvision/<name>` for"
            " any torchvision classifier, untrained (e.g. `torchvision/resnet50`; `model.width` does "
            "not apply); the registry in `harness/models/config.py`; or your own class by import path, "
            "`my_models:WideNet` or `./my_models.py:WideNet`"
        ),
    )
    width: int = Field(
        64,
        ge=1,
        le=4096,
        description="base channels; 64 is the standard ResNet18 (11,173,962 parameters for 10 classes)",
    )
    # Keyword arguments of the model's constructor: a plug-in's own, or a torchvision model's.
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "keyword arguments of the model's constructor: a plug-in's or a torchvision model's "
            "(`num_classes` is passed for you)"
        ),
    )
