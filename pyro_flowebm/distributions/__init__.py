"""Distributions: the FlowEBM, its latent-space form, and the reparameterizer for Pyro models."""

from .flowebm import FlowEBM, LatentFlowEBM
from .reparam import FlowEBMReparam

__all__ = ["FlowEBM", "FlowEBMReparam", "LatentFlowEBM"]
