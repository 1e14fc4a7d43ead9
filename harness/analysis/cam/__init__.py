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
}
