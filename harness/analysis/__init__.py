"""Analysis of a trained model: per-class metrics, Grad-CAM and whether its maps and confidences can be trusted."""
