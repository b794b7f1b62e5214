"""Deprecated alias of pyro_flowebm.nn: keeps the imports of 0.1 working."""

import warnings

from .nn import ConvEnergy, MLPEnergy

__all__ = [
    "ConvEnergy",
    "MLPEnergy",
]

warnings.warn(
    "pyro_flowebm.energy is deprecated: import from pyro_flowebm.nn",
    DeprecationWarning,
    stacklevel=2,
)
