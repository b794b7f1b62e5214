"""Samplers for FlowEBMs: Pyro NUTS in latent or data space."""

from .nuts import data_space_nuts, latent_nuts

__all__ = ["data_space_nuts", "latent_nuts"]
