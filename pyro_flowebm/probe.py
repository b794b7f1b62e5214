"""Deprecated alias of pyro_flowebm.metrics: keeps the imports of 0.1 working."""

import warnings

from .metrics.probe import (
    DigitsProbe,
    fit_probe,
    frechet_distance,
    gaussian_frechet_distance,
    load_or_fit_probe,
    probe_summary,
)

__all__ = [
    "DigitsProbe",
    "fit_probe",
    "frechet_distance",
    "gaussian_frechet_distance",
    "load_or_fit_probe",
    "probe_summary",
]

warnings.warn(
    "pyro_flowebm.probe is deprecated: import from pyro_flowebm.metrics",
    DeprecationWarning,
    stacklevel=2,
)
