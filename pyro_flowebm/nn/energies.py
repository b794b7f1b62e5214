"""Energy networks E(x) for the tilt p(x) ∝ q(x) exp(-E(x))."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import check_int
from .dense import Dense

__all__ = ["ConvEnergy", "MLPEnergy"]


class MLPEnergy(nn.Module):
    """A scalar energy :math:`E(x)` for vectors: an MLP with SiLU activations.

    SiLU keeps :math:`E` smooth, so HMC's leapfrog error stays small. The last layer
    starts at zero: a new energy is :math:`E \\equiv 0`, and a new
    :class:`~pyro_flowebm.FlowEBM` equals its backbone exactly.

    Args:
        dim: dimension of the data.
        hidden: width of the hidden layers.
        num_layers: number of hidden layers.

    Example:
        >>> import torch
        >>> energy = MLPEnergy(2, hidden=16)
        >>> energy(torch.randn(5, 3, 2)).shape
        torch.Size([5, 3])
        >>> bool((energy(torch.randn(4, 2)) == 0).all())
        True
    """

    def __init__(self, dim: int, hidden: int = 64, num_layers: int = 2) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("hidden", hidden, 1)
        check_int("num_layers", num_layers, 1)
        sizes = [dim] + [hidden] * num_layers
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [Dense(d_in, d_out), nn.SiLU()]
        layers.append(Dense(hidden, 1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Energies of points ``x`` of shape ``(..., dim)``; returns shape ``(...)``."""
        return self.net(x).squeeze(-1)


_ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


class ConvEnergy(nn.Module):
    r"""A scalar energy :math:`E(x)` for images ``(C, H, W)``: a small ConvNet.

    The design of the ConvNet energies of Nijkamp et al. (2022): a 3x3 convolution of
    ``hidden`` channels, then ``num_layers - 1`` strided 4x4 convolutions that halve the
    image and double the channels (stride 1 once the image is 1 pixel wide), an
    activation after each, and a linear read-out of the flattened features. SiLU (the
    default) keeps :math:`E` smooth for HMC; ``"leaky_relu"`` (slope 0.2) is the paper's
    choice. ``spectral_norm=True`` wraps every convolution in
    :func:`torch.nn.utils.parametrizations.spectral_norm`, which bounds the energy's
    Lipschitz constant (the power iteration updates in training mode, so the energy moves
    a little between calls while training; it is fixed in ``eval()`` mode). The read-out starts
    at zero: a new energy is :math:`E \equiv 0`, and a new
    :class:`~pyro_flowebm.FlowEBM` equals its backbone.

    Args:
        event_shape: ``(C, H, W)`` of one image.
        hidden: channels of the first convolution.
        num_layers: number of convolutions, at least 1.
        activation: ``"silu"`` or ``"leaky_relu"``.
        spectral_norm: spectrally normalize every layer.

    Example:
        >>> energy = ConvEnergy((1, 8, 8), hidden=8)
        >>> energy(torch.rand(5, 1, 8, 8)).shape
        torch.Size([5])
        >>> bool((energy(torch.rand(4, 1, 8, 8)) == 0).all())
        True

    References:
        Nijkamp, Gao, Hill, Han, Zhu, Wu. MCMC should mix: learning energy-based model with
        neural transport latent space MCMC. ICLR 2022. arXiv:2006.06897.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        hidden: int = 32,
        num_layers: int = 3,
        activation: str = "silu",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        event_shape = torch.Size(event_shape)
        if len(event_shape) != 3 or min(event_shape) < 1:
            raise ValueError(f"expected event_shape (C, H, W), got {tuple(event_shape)}")
        check_int("hidden", hidden, 1)
        check_int("num_layers", num_layers, 1)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"expected activation in {sorted(_ACTIVATIONS)}, got {activation!r}")
        c, h, w = event_shape
        norm = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [norm(nn.Conv2d(c, hidden, 3, padding=1))]
        layers.append(_ACTIVATIONS[activation]())
        channels = hidden
        for _ in range(num_layers - 1):
            kernel, stride = (4, 2) if min(h, w) > 1 else (3, 1)
            conv = nn.Conv2d(channels, 2 * channels, kernel, stride, padding=1)
            layers += [norm(conv), _ACTIVATIONS[activation]()]
            channels = 2 * channels
            h, w = (h + 2 - kernel) // stride + 1, (w + 2 - kernel) // stride + 1
        # Not spectrally normalized: it starts at zero, where the norm's division is 0 / 0.
        readout = nn.Linear(channels * h * w, 1)
        nn.init.zeros_(readout.weight)
        nn.init.zeros_(readout.bias)
        layers += [nn.Flatten(), readout]
        self.net = nn.Sequential(*layers)
        self.event_shape = event_shape

    def forward(self, x: Tensor) -> Tensor:
        """Energies of images ``x`` of shape ``(..., C, H, W)``; returns shape ``(...)``."""
        batch_shape = x.shape[: x.dim() - 3]
        return self.net(x.reshape(-1, *self.event_shape)).reshape(batch_shape)
