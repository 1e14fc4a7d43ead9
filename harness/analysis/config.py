"""The ``analysis`` section of a config, the registry of class activation map methods that
``analysis.cam_methods`` names (lazy: validating a config imports no torch), and ``AnalysisSpec``:
what the analysis reads of a whole config (``harness.config.Config`` is one)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BeforeValidator, Field

from harness.core.registry import Registry
from harness.core.schema import Section
from harness.data.config import DataConfig
from harness.models.config import ModelConfig
from harness.training.config import TrainConfig

CAM_METHODS = Registry(
    "analysis.cam_methods",
    "cam",
    "a harness.analysis.cam.base.CAMMethod subclass, or a function returning one, called without arguments: "
    "./my_cam.py:MyCAM",
)
CAM_METHODS.add(
    "gradcam",
    "harness.analysis.cam.gradcam:GradCAM",
    "Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient, Captum's LayerGradCam",
    native=True,
)
CAM_METHODS.add(
    "gradcam++",
    "harness.analysis.cam.gradcam_plus_plus:GradCAMPlusPlus",
    "Grad-CAM++ (Chattopadhay et al. 2018): channels weighted by their positive gradients, per location",
    native=True,
)
CAM_METHODS.add(
    "xgradcam",
    "harness.analysis.cam.xgradcam:XGradCAM",
    "XGrad-CAM (Fu et al. 2020): channels weighted by their gradients averaged over their own activation",
    native=True,
)
CAM_METHODS.add(
    "hirescam",
    "harness.analysis.cam.hirescam:HiResCAM",
    "HiResCAM (Draelos & Carin 2020): gradient times activation at every location, summed over channels",
    native=True,
)
CAM_METHODS.add(
    "layercam",
    "harness.analysis.cam.layercam:LayerCAM",
    "LayerCAM (Jiang et al. 2021): positive gradient times activation at every location",
    native=True,
)
CAM_METHODS.add(
    "eigencam",
    "harness.analysis.cam.eigencam:EigenCAM",
    "Eigen-CAM (Muhammad & Yeasin 2020): the activations' first principal component, no gradients, no class",
    native=True,
)
CAM_METHODS.add(
    "scorecam",
    "harness.analysis.cam.scorecam:ScoreCAM",
    "Score-CAM (Wang et al. 2020): channels weighted by the class probability of the image masked by them",
    native=True,
)
EVERY_CAM_METHOD = "all"  # in analysis.cam_methods: every registered method, at the time of use


def _as_list(value: Any) -> Any:
    """``--set analysis.cam_methods=all`` (or one name) as the list it stands for."""
    return [value] if isinstance(value, str) else value


def _cam_method(name: str) -> str:
    if name != EVERY_CAM_METHOD and (problem := CAM_METHODS.problem(name)):
        raise ValueError(f"{problem}, or {EVERY_CAM_METHOD} (every registered one)")
    return name


def _not_empty(names: list[str]) -> list[str]:
    if not names:
        raise ValueError(f"expected at least one method, e.g. [gradcam] or {EVERY_CAM_METHOD}")
    return names


class AnalysisConfig(Section):
    enabled: bool = Field(True, description="analyze the best checkpoint at the end of a completed run")
    # Each is a row of every Grad-CAM figure; past a few hundred rows a PNG outgrows what viewers open.
    misclassified: int = Field(
        20,
        ge=0,
        le=200,
        description=(
            "how many misclassified test images to show and explain (at most 200: each is a row of the "
            "Grad-CAM figures)"
        ),
    )
    order: Literal["first", "confident"] = Field(
        "first", description="`first` (test-set order) or `confident` (the most confident mistakes first)"
    )
    gradcam_layers: list[str] = Field(
        default_factory=lambda: ["layer1", "layer2", "layer3", "layer4"],
        description=(
            "modules of the model for Grad-CAM, by dotted path (`layer4`, or a block inside it: "
            "`layer4.1`); checked against the model before the run starts"
        ),
    )
    gradcam_targets: list[Literal["predicted", "true"]] = Field(
        default_factory=lambda: ["predicted", "true"],
        description="Grad-CAM for the class chosen and for the class missed",
    )
    # One method keeps the analysis as cheap as it was; two or more are also compared (ROAD, paired tests).
    cam_methods: Annotated[
        list[Annotated[str, AfterValidator(_cam_method)]], BeforeValidator(_as_list), AfterValidator(_not_empty)
    ] = Field(
        default_factory=lambda: ["gradcam"],
        description=(
            "class activation map methods, a list or one name: registered ones, your own by import path "
            "(`./my_cam.py:MyCAM`, a `CAMMethod` subclass) or entry point (`cam.<name>`), or `all` (every "
            "registered one); the first draws the Grad-CAM and sanity figures; two or more are also compared "
            "and ranked per layer (deletion, insertion, ROAD, sanity: docs/trust.md)"
        ),
    )

    def cam_method_names(self) -> list[str]:
        """``cam_methods`` with ``all`` replaced by every registered name (the harness's, this process's and
        installed packages'), each once, in the order given."""
        names = [
            name
            for listed in self.cam_methods
            for name in (CAM_METHODS.names() if listed == EVERY_CAM_METHOD else [listed])
        ]
        return list(dict.fromkeys(names))


class AnalysisSpec(Protocol):
    """What the analysis reads of a config."""

    name: str
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    analysis: AnalysisConfig

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> AnalysisSpec: ...
