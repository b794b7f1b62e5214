"""Training of the tilt: a step function over an explicit state, and the loop around it."""

from .tilt import TiltSettings, TiltState, TrainingDiverged, backbone_modules, fit_ebm, tilt_step

__all__ = [
    "TiltSettings",
    "TiltState",
    "TrainingDiverged",
    "backbone_modules",
    "fit_ebm",
    "tilt_step",
]
