"""Distributions: the FlowEBM, its latent-space form, the reparameterizer, and SIR draws."""

from .flowebm import FlowEBM, LatentFlowEBM
from .reparam import FlowEBMReparam, flowebm_of
from .resampling import (
    ImportanceResampler,
    LatentSampler,
    kish_ess,
    log_mean_exp,
    resampled_order,
    systematic_resample,
)

__all__ = [
    "FlowEBM",
    "FlowEBMReparam",
    "ImportanceResampler",
    "LatentFlowEBM",
    "LatentSampler",
    "flowebm_of",
    "kish_ess",
    "log_mean_exp",
    "resampled_order",
    "systematic_resample",
]
