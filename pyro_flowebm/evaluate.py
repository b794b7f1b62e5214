"""Deprecated alias of pyro_flowebm.metrics: keeps the imports of 0.1 working."""

import warnings

from .metrics import (
    ModeCoverage,
    bits_per_dim,
    energy_distance,
    evaluate_samples,
    grid_kl,
    mmd,
    mode_coverage,
    mode_weight_error,
)

__all__ = [
    "ModeCoverage",
    "bits_per_dim",
    "energy_distance",
    "evaluate_samples",
    "grid_kl",
    "mmd",
    "mode_coverage",
    "mode_weight_error",
]

warnings.warn(
    "pyro_flowebm.evaluate is deprecated: import from pyro_flowebm.metrics",
    DeprecationWarning,
    stacklevel=2,
)
