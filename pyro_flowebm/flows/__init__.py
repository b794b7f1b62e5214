"""Flows: the normflows adapter, presets for vectors and images, and the backbone q(x)."""

from .backbone import fit_backbone, flow_backbone
from .glow import glow
from .presets import neural_spline, realnvp
from .transform import NormflowsTransform

__all__ = [
    "NormflowsTransform",
    "fit_backbone",
    "flow_backbone",
    "glow",
    "neural_spline",
    "realnvp",
]
