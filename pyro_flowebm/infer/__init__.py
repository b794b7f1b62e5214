"""Samplers: many-chain kernels, warm-up, the chain runner, SMC and log Z, Pyro NUTS, presets,
and posteriors of Pyro models."""

from .adaptation import Adaptation, CycleAdaptation, HMCAdaptation
from .chains import corrected_sample, run_chains
from .cycle import Cycle
from .hmc import HMC, MALA
from .independence import IndependenceMH
from .kernel import Kernel
from .langevin import ULA
from .log_z import KHAT_THRESHOLD, LogZEstimate, SMCResampler, estimate_log_z
from .model import CHECK_TOLERANCE, LatentSite, ModelDensity
from .nuts import data_space_nuts, latent_nuts
from .posterior import METHODS, posterior_data, sample_posterior
from .presets import SAMPLERS, preset_kernel, sample_ebm
from .smc import SMCResult, anneal
from .state import ChainState, Params, StepInfo, value_and_grad

__all__ = [
    "CHECK_TOLERANCE",
    "HMC",
    "KHAT_THRESHOLD",
    "METHODS",
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
    "LatentSite",
    "LogZEstimate",
    "ModelDensity",
    "Params",
    "SMCResampler",
    "SMCResult",
    "StepInfo",
    "anneal",
    "corrected_sample",
    "data_space_nuts",
    "estimate_log_z",
    "latent_nuts",
    "posterior_data",
    "preset_kernel",
    "run_chains",
    "sample_posterior",
    "sample_ebm",
    "value_and_grad",
]
