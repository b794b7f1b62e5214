"""Exact answers for 2-D models by quadrature: log Z, a posterior's moments, the evidence."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core import check_int

if TYPE_CHECKING:
    from ..distributions import FlowEBM

__all__ = ["GridPosterior", "grid_posterior"]

# The prior's normalizing constant is a Riemann sum over this square, with this many
# points a side: wide enough for the built-in 2-D toys and their backbones.
_PRIOR_HALF_WIDTH = 20.0
_PRIOR_POINTS = 1601
_BATCH = 50_000


@dataclass(frozen=True)
class GridPosterior:
    r"""A 2-D posterior :math:`p(x \mid y) \propto q(x) e^{-E(x)} p(y \mid x)` on a grid.

    Attributes:
        points: the grid's points, ``(n, 2)``, float64.
        weights: their posterior probabilities (summing to one), ``(n,)``, float64.
        log_evidence: :math:`\log p(y) = \log \int p(x) p(y \mid x) dx` with the prior
            normalized (``0`` without a likelihood).
        log_z: the prior's :math:`\log Z`.
    """

    points: Tensor = field(repr=False)
    weights: Tensor = field(repr=False)
    log_evidence: float
    log_z: float

    def expectation(self, f: Callable[[Tensor], Tensor]) -> Tensor:
        """:math:`\\mathbb E[f(x) \\mid y]` for ``f`` mapping points ``(n, 2)`` to ``(n, ...)``."""
        values = f(self.points).double()
        w = self.weights.reshape(-1, *([1] * (values.dim() - 1)))
        return (w * values).sum(0)

    @property
    def mean(self) -> Tensor:
        """The posterior mean, ``(2,)``."""
        return self.expectation(lambda x: x)

    @property
    def sd(self) -> Tensor:
        """The posterior standard deviations, ``(2,)``."""
        mean = self.mean
        return self.expectation(lambda x: (x - mean).pow(2)).sqrt()


def _log_density(
    ebm: FlowEBM, points: Tensor, log_likelihood: Callable[[Tensor], Tensor] | None
) -> Tensor:
    dtype = ebm.base_dist.mean.dtype
    out = []
    with torch.no_grad():
        for chunk in points.split(_BATCH):
            x = chunk.to(dtype)
            value = ebm.backbone.log_prob(x) - ebm.energy_of(x)
            if log_likelihood is not None:
                value = value + log_likelihood(x)
            out.append(value.double())
    return torch.cat(out)


def _grid(box: Sequence[float], num: int) -> tuple[Tensor, float]:
    """Points of a box ``(xmin, xmax, ymin, ymax)``, ``num`` a side, and the log cell area."""
    xmin, xmax, ymin, ymax = (float(v) for v in box)
    if not (xmin < xmax and ymin < ymax):
        raise ValueError(f"expected a box (xmin, xmax, ymin, ymax), got {tuple(box)}")
    lx = torch.linspace(xmin, xmax, num, dtype=torch.float64)
    ly = torch.linspace(ymin, ymax, num, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(lx, ly, indexing="ij"), -1).reshape(-1, 2)
    return points, math.log(float(lx[1] - lx[0]) * float(ly[1] - ly[0]))


def grid_posterior(
    ebm: FlowEBM,
    log_likelihood: Callable[[Tensor], Tensor] | None = None,
    boxes: Sequence[Sequence[float]] = ((-_PRIOR_HALF_WIDTH, _PRIOR_HALF_WIDTH) * 2,),
    num: int = _PRIOR_POINTS,
    *,
    log_z: float | None = None,
) -> GridPosterior:
    r"""The posterior of a 2-D FlowEBM prior under a likelihood, by Riemann sums: the truth
    that samplers are tested against.

    The prior's :math:`\log Z` is a sum over :math:`[-20, 20]^2` (1601 points a side); the
    posterior's over ``boxes``, ``num`` points a side each, which must hold its mass (for
    a sharp likelihood, small boxes around its modes, with several points per standard
    deviation).

    Args:
        ebm: a FlowEBM with a 2-D event.
        log_likelihood: :math:`\log p(y \mid x)` for points ``(n, 2)``, giving ``(n,)``;
            ``None``: the prior itself.
        boxes: ``(xmin, xmax, ymin, ymax)`` regions, not overlapping.
        num: points a side of each box.
        log_z: the prior's :math:`\log Z` from an earlier call (``GridPosterior.log_z``),
            to skip its sum.

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> normal = torch.distributions.Normal(0.0, 0.5)
        >>> truth = grid_posterior(ebm, lambda x: normal.log_prob(x[:, 0] - 1.0), num=401)
        >>> round(truth.log_z, 3)  # the energy is zero at initialization
        0.0
        >>> round(float(truth.mean[0]), 2)  # N(0, 1) prior, y = 1 with sd 0.5: mean 0.8
        0.8
    """
    if tuple(ebm.event_shape) != (2,):
        raise ValueError(f"expected a FlowEBM with event shape (2,), got {tuple(ebm.event_shape)}")
    check_int("num", num, 2)
    if log_z is None:
        points, log_area = _grid((-_PRIOR_HALF_WIDTH, _PRIOR_HALF_WIDTH) * 2, _PRIOR_POINTS)
        log_z = float(torch.logsumexp(_log_density(ebm, points, None), 0)) + log_area
    parts, log_masses = [], []
    for box in boxes:
        points, log_area = _grid(box, num)
        parts.append(points)
        log_masses.append(_log_density(ebm, points, log_likelihood) + log_area)
    log_mass = torch.cat(log_masses)
    total = torch.logsumexp(log_mass, 0)
    return GridPosterior(
        points=torch.cat(parts),
        weights=(log_mass - total).exp(),
        log_evidence=float(total) - log_z,
        log_z=log_z,
    )
