"""Samplers for FlowEBMs: vectorized many-chain kernels, and Pyro NUTS in latent or data space."""

from .chains import run_chains
from .kernels import HMC, MALA, ULA, ChainState, Cycle, IndependenceMH, Kernel, StepInfo
from .nuts import data_space_nuts, latent_nuts

__all__ = [
    "HMC",
    "MALA",
    "ULA",
    "ChainState",
    "Cycle",
    "IndependenceMH",
    "Kernel",
    "StepInfo",
    "data_space_nuts",
    "latent_nuts",
    "run_chains",
]
