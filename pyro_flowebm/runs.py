"""Deprecated alias of pyro_flowebm.app: keeps the imports of 0.1 working."""

import warnings

from .app import RunConfig, RunExistsError, load_run, read_metrics, train_run

__all__ = [
    "RunConfig",
    "RunExistsError",
    "load_run",
    "read_metrics",
    "train_run",
]

warnings.warn(
    "pyro_flowebm.runs is deprecated: import from pyro_flowebm.app",
    DeprecationWarning,
    stacklevel=2,
)
