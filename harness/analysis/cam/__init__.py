"""Class activation maps: ``base`` (the shared passes, and the ``CAMMethod`` every method subclasses),
and one module per method. ``harness.analysis.config.CAM_METHODS`` names them: adding a method is its
module here and its line ``CAM_METHODS.add(...)`` there. A method of one's own plugs in like any other
plug-in: by import path (``analysis.cam_methods: [gradcam, ./my_cam.py:MyCAM]``), through the
entry-point group ``harness.plugins`` (``cam.mine = "my_pkg.cams:MyCAM"``), or from a notebook
(``CAM_METHODS.register("mine")(MyCAM)``)."""
