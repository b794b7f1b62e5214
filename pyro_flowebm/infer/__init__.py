"""Samplers: many-chain kernels, warm-up, the chain runner, SMC and log Z, Pyro NUTS, presets."""

from .adaptation import Adaptation, CycleAdaptation, HMCAdaptation
from .chains import corrected_sample, run_chains
from .cycle import Cycle
from .hmc import HMC, MALA
from .independence import IndependenceMH
from .kernel import Kernel
from .langevin import ULA
from .log_z import KHAT_THRESHOLD, LogZEstimate, SMCResampler, estimate_log_z
from .nuts import data_space_nuts, latent_nuts
from .presets import SAMPLERS, preset_kernel, sample_ebm
from .smc import SMCResult, anneal
from .state import ChainState, Params, StepInfo, value_and_grad

__all__ = [
    "HMC",
    "KHAT_THRESHOLD",
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
    "LogZEstimate",
    "Params",
    "SMCResampler",
    "SMCResult",
    "StepInfo",
    "anneal",
    "corrected_sample",
    "data_space_nuts",
    "estimate_log_z",
    "latent_nuts",
    "preset_kernel",
    "run_chains",
    "sample_ebm",
    "value_and_grad",
]
