"""Class activation maps, one module per method over ``base`` (the shared passes), by name.

``METHODS`` maps a method's name to the import string of its class (``"module:Class"``, a subclass of
``harness.analysis.cam.base.CAMMethod`` built without arguments) and a one-line description. Naming
the methods imports nothing: this module imports no torch, and a method's module is imported when
its maps are computed. A method of one's own plugs in the same way: its class in any module, and one
line here, or ``METHODS["mine"] = ("package.module:MyCAM", "what it does")`` from outside.
"""

from __future__ import annotations

METHODS: dict[str, tuple[str, str]] = {
    "gradcam": (
        "harness.analysis.cam.gradcam:GradCAM",
        "Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient, Captum's LayerGradCam",
    ),
    "gradcam++": (
        "harness.analysis.cam.gradcam_plus_plus:GradCAMPlusPlus",
        "Grad-CAM++ (Chattopadhay et al. 2018): channels weighted by their positive gradients, per location",
    ),
    "xgradcam": (
        "harness.analysis.cam.xgradcam:XGradCAM",
        "XGrad-CAM (Fu et al. 2020): channels weighted by their gradients averaged over their own activation",
    ),
    "hirescam": (
        "harness.analysis.cam.hirescam:HiResCAM",
        "HiResCAM (Draelos & Carin 2020): gradient times activation at every location, summed over channels",
    ),
    "layercam": (
        "harness.analysis.cam.layercam:LayerCAM",
        "LayerCAM (Jiang et al. 2021): positive gradient times activation at every location",
    ),
    "eigencam": (
        "harness.analysis.cam.eigencam:EigenCAM",
        "Eigen-CAM (Muhammad & Yeasin 2020): the activations' first principal component, no gradients, no class",
    ),
    "scorecam": (
        "harness.analysis.cam.scorecam:ScoreCAM",
        "Score-CAM (Wang et al. 2020): channels weighted by the class probability of the image masked by them",
    ),
}
