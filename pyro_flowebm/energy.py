"""Energy networks E(x) for the tilt p(x) ∝ q(x) exp(-E(x))."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLPEnergy"]


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
        if dim < 1 or hidden < 1 or num_layers < 1:
            raise ValueError(
                "expected dim, hidden and num_layers >= 1, "
                f"got dim={dim}, hidden={hidden}, num_layers={num_layers}"
            )
        sizes = [dim] + [hidden] * num_layers
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.SiLU()]
        layers.append(nn.Linear(hidden, 1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Energies of points ``x`` of shape ``(..., dim)``; returns shape ``(...)``."""
        return self.net(x).squeeze(-1)
