"""Deprecated alias of pyro_flowebm.app and pyro_flowebm.infer: keeps the imports of 0.1 working."""

import warnings

from .app import Evaluation, evaluate_run, plot_images, plot_overview
from .infer import SAMPLERS, sample_ebm

__all__ = [
    "SAMPLERS",
    "Evaluation",
    "evaluate_run",
    "plot_images",
    "plot_overview",
    "sample_ebm",
]

warnings.warn(
    "pyro_flowebm.report is deprecated: import from pyro_flowebm.app and pyro_flowebm.infer",
    DeprecationWarning,
    stacklevel=2,
)
