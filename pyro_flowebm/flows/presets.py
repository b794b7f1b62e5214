"""Coupling-flow presets for vectors: affine (RealNVP) and rational-quadratic spline."""

from __future__ import annotations

import math

import normflows as nf
from torch import nn

from ..core import check_int
from ..nn import Dense
from .transform import NormflowsTransform

__all__ = ["neural_spline", "realnvp"]


def _coupling_net(d_in: int, d_out: int, hidden: int) -> nn.Module:
    # Smooth activations: HMC integrates gradients of U(z) through the flow, and ReLU kinks
    # make the leapfrog error jump. The last layer starts at zero, so the flow starts as the
    # identity.
    net = nn.Sequential(
        Dense(d_in, hidden),
        nn.Tanh(),
        Dense(hidden, hidden),
        nn.Tanh(),
        Dense(hidden, d_out),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def _check_preset_args(dim: int, num_layers: int, hidden: int) -> None:
    if check_int("dim", dim, 1) < 2:
        raise ValueError(f"expected dim >= 2 for a coupling flow, got dim={dim}")
    check_int("num_layers", num_layers, 1)
    check_int("hidden", hidden, 1)


def realnvp(dim: int, num_layers: int = 8, hidden: int = 64) -> NormflowsTransform:
    r"""RealNVP-style affine coupling flow for vectors (Dinh et al., 2017).

    Each layer is a normflows ``AffineCouplingBlock`` (the first half of the coordinates
    sets an exponential scale and a shift of the second half) followed by a swap of the
    halves. The coupling networks are two-hidden-layer tanh MLPs whose last layer starts at
    zero, so every coupling starts as the identity and a new backbone is exactly
    :math:`\mathcal N(0, I)` (the flow itself is a permutation of the coordinates when
    the number of swaps is odd).

    Args:
        dim: dimension of the data, at least 2.
        num_layers: number of coupling layers.
        hidden: width of the coupling networks.

    Example:
        >>> import torch
        >>> t = realnvp(2, num_layers=4, hidden=16)
        >>> z = torch.randn(10, 2)
        >>> torch.allclose(t.inv(t(z)), z, atol=1e-5)
        True

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803.
    """
    _check_preset_args(dim, num_layers, hidden)
    d1 = math.ceil(dim / 2)
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        net = _coupling_net(d1, 2 * (dim - d1), hidden)
        layers += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
    return NormflowsTransform(layers, event_shape=(dim,))


def neural_spline(
    dim: int,
    num_layers: int = 4,
    hidden: int = 64,
    *,
    num_bins: int = 8,
    tail_bound: float = 3.0,
) -> NormflowsTransform:
    """Rational-quadratic neural spline coupling flow for vectors (Durkan et al., 2019).

    Each layer is a normflows ``CoupledRationalQuadraticSpline`` (alternating masks, two
    residual blocks of width ``hidden``, linear tails outside ``[-tail_bound, tail_bound]``)
    followed by an ``LULinearPermute`` that mixes the coordinates.

    Args:
        dim: dimension of the data, at least 2.
        num_layers: number of spline coupling layers.
        hidden: width of the residual networks that emit the spline parameters.
        num_bins: number of spline bins.
        tail_bound: the splines act on ``[-tail_bound, tail_bound]``, identity outside.

    Example:
        >>> import torch
        >>> t = neural_spline(2, num_layers=2, hidden=16)
        >>> z = torch.randn(10, 2)
        >>> torch.allclose(t.inv(t(z)), z, atol=1e-4)
        True

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. arXiv:1906.04032.
    """
    _check_preset_args(dim, num_layers, hidden)
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [
            nf.flows.CoupledRationalQuadraticSpline(
                dim,
                num_blocks=2,
                num_hidden_channels=hidden,
                num_bins=num_bins,
                tail_bound=tail_bound,
                reverse_mask=bool(i % 2),
            ),
            nf.flows.LULinearPermute(dim),
        ]
    return NormflowsTransform(layers, event_shape=(dim,))
