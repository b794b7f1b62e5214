"""Samplers: vectorized many-chain kernels, their warm-up, the chain runner, Pyro NUTS, presets."""

from .adaptation import Adaptation, CycleAdaptation, HMCAdaptation
from .chains import corrected_sample, run_chains
from .cycle import Cycle
from .hmc import HMC, MALA
from .independence import IndependenceMH
from .kernel import Kernel
from .langevin import ULA
from .nuts import data_space_nuts, latent_nuts
from .presets import SAMPLERS, preset_kernel, sample_ebm
from .state import ChainState, Params, StepInfo, value_and_grad

__all__ = [
    "HMC",
    "MALA",
    "SAMPLERS",
    "ULA",
    "Adaptation",
    "ChainState",
    "Cycle",
    "CycleAdaptation",
    "HMCAdaptation",
    "IndependenceMH",
    "Kernel",
    "Params",
    "StepInfo",
    "corrected_sample",
    "data_space_nuts",
    "latent_nuts",
    "preset_kernel",
    "run_chains",
    "sample_ebm",
    "value_and_grad",
]
