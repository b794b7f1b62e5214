"""Neural networks: the energies E(x) of the tilt, and the linear layer the flows share."""

from .dense import Dense
from .energies import ConvEnergy, MLPEnergy

__all__ = ["ConvEnergy", "Dense", "MLPEnergy"]
