"""Weighted particles: Kish's effective sample size, systematic resampling, and SIR draws of p."""

from __future__ import annotations

import math
import warnings
from typing import Any, Protocol

import torch
from torch import Tensor

from ..core import check_int

__all__ = [
    "ImportanceResampler",
    "LatentSampler",
    "kish_ess",
    "log_mean_exp",
    "resampled_order",
    "systematic_resample",
]


def kish_ess(log_weights: Tensor) -> Tensor:
    r"""Kish's effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2` over the last
    dimension, from unnormalized log-weights (``-inf``: weight zero).

    Example:
        >>> kish_ess(torch.tensor([0.0, 0.0, float("-inf"), 0.0]))
        tensor(3.)
    """
    log_w = log_weights - log_weights.max(-1, keepdim=True).values
    return (2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1)).exp()


def systematic_resample(
    log_weights: Tensor, num_draws: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""Indices of ``num_draws`` draws from the particles, each with probability proportional
    to its weight, by systematic resampling over the last dimension.

    One uniform :math:`u` per row; draw :math:`j` is the particle whose cumulative weight
    first exceeds :math:`(u + j) / n`. Each particle is drawn :math:`\lfloor n W_i \rfloor`
    or :math:`\lceil n W_i \rceil` times, the least variance of the usual schemes (Douc,
    Cappé and Moulines, 2005). Rows of ``log_weights`` (shape ``(..., M)``) are resampled
    independently; every row needs a positive weight.

    Returns:
        ``(..., num_draws)`` indices into the last dimension, in increasing order.

    Example:
        >>> systematic_resample(torch.tensor([0.0, float("-inf"), 0.0]), 4).tolist()[:1]
        [0]
    """
    check_int("num_draws", num_draws, 1)
    weights = torch.softmax(log_weights, -1)
    cumulative = weights.cumsum(-1)
    factory = {"dtype": weights.dtype, "device": weights.device}
    u = torch.rand((*weights.shape[:-1], 1), generator=generator, **factory)
    points = (u + torch.arange(num_draws, **factory)) / num_draws
    index = torch.searchsorted(cumulative.contiguous(), points.contiguous(), right=True)
    return index.clamp(max=weights.shape[-1] - 1)


class LatentSampler(Protocol):
    """What :class:`~pyro_flowebm.FlowEBM` draws with: ``sampler(ebm, n)`` returns ``n``
    independent latent draws ``z`` of :math:`p(z) \\propto \\mathcal N(z; 0, I)
    e^{-E(g(z))}`, shape ``(n, *event_shape)``."""

    def __call__(self, ebm: Any, num_draws: int) -> Tensor: ...


class ImportanceResampler:
    r"""Draws of a :class:`~pyro_flowebm.FlowEBM` by sampling importance resampling (SIR)
    from its backbone: the default sampler of ``FlowEBM.sample``.

    For ``n`` draws it proposes :math:`M = \max(\text{min\_particles},
    \text{particles\_per\_draw}\cdot n)` latent points :math:`z_i \sim \mathcal N(0, I)`,
    weights them by :math:`w_i = e^{-E(g(z_i))}` (the backbone's density cancels) and keeps
    ``n`` of them by systematic resampling, in random order. The draws' law tends to
    :math:`p` as :math:`M` grows; a draw repeats when the weights are uneven. When Kish's
    effective sample size of the weights is below ``n`` the draws are mostly repeats of a
    few points and a :class:`UserWarning` says so: the weights have degenerated (high
    dimension, a strong tilt), and annealed SMC
    (:class:`pyro_flowebm.infer.SMCResampler`) is the sampler to use.

    Args:
        particles_per_draw: proposals per draw.
        min_particles: proposals for any call, however few draws it asks for (a single
            draw from 16 proposals follows a law far from :math:`p`).
        batch_size: proposals per energy evaluation.

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> q = flow_backbone(flows.realnvp(2, 2, 8), event_shape=(2,))
        >>> ebm = FlowEBM(q, MLPEnergy(2, 8), sampler=ImportanceResampler(particles_per_draw=64))
        >>> ebm.sample((5,)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, particles_per_draw: int = 32, min_particles: int = 4096, batch_size: int = 8192
    ) -> None:
        self.particles_per_draw = check_int("particles_per_draw", particles_per_draw, 1)
        self.min_particles = check_int("min_particles", min_particles, 2)
        self.batch_size = check_int("batch_size", batch_size, 1)

    def __repr__(self) -> str:
        return (
            f"ImportanceResampler(particles_per_draw={self.particles_per_draw}, "
            f"min_particles={self.min_particles})"
        )

    def __call__(self, ebm: Any, num_draws: int) -> Tensor:
        num_particles = max(self.min_particles, self.particles_per_draw * num_draws)
        z, log_weights = ebm.importance_draws(num_particles, batch_size=self.batch_size)
        if not bool(torch.isfinite(log_weights).any()):
            raise ValueError(
                f"expected a finite energy at some of the {num_particles} backbone draws, "
                "got none: every importance weight is zero"
            )
        ess = float(kish_ess(log_weights))
        if ess < num_draws:
            warnings.warn(
                f"importance resampling kept {num_draws} draws from weights whose effective "
                f"sample size is {ess:.1f} of {num_particles}: the draws repeat a few points. "
                "Use more particles_per_draw, or pyro_flowebm.infer.SMCResampler",
                UserWarning,
                stacklevel=3,
            )
        return z[resampled_order(log_weights, num_draws)]


def resampled_order(log_weights: Tensor, num_draws: int) -> Tensor:
    """Indices of ``num_draws`` systematic-resampling draws from 1-D ``log_weights``, in
    random order (systematic resampling returns them sorted, and repeats side by side)."""
    index = systematic_resample(log_weights, num_draws)
    return index[torch.randperm(num_draws, device=index.device)]


def log_mean_exp(log_values: Tensor, dim: int = -1) -> Tensor:
    """:math:`\\log \\frac1n \\sum_i e^{a_i}` over ``dim``, stably."""
    return torch.logsumexp(log_values, dim) - math.log(log_values.shape[dim])
