"""Built-in data sets with exact samplers and known modes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["eight_gaussians", "eight_gaussians_modes"]


def eight_gaussians_modes(radius: float = 4.0, dtype: torch.dtype | None = None) -> Tensor:
    """The 8 mode centres on a circle of ``radius``, shape ``(8, 2)``, mode k at angle k·45°.

    Example:
        >>> eight_gaussians_modes().shape
        torch.Size([8, 2])
    """
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    modes = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
    return modes.to(dtype or torch.get_default_dtype())


def eight_gaussians(
    n: int,
    radius: float = 4.0,
    sd: float = 0.15,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Exact draws of an equal-weight mixture of 8 isotropic Gaussians on a ring.

    Args:
        n: number of points.
        radius: radius of the ring of mode centres.
        sd: standard deviation of each component.
        generator: torch generator for reproducible draws.
        dtype: dtype of the result (default: torch's default dtype).

    Returns:
        Points of shape ``(n, 2)``.

    Example:
        >>> x = eight_gaussians(1000, generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([1000, 2])
    """
    if n < 0:
        raise ValueError(f"expected n >= 0, got {n}")
    modes = eight_gaussians_modes(radius, torch.float64)
    k = torch.randint(8, (n,), generator=generator)
    x = modes[k] + sd * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.to(dtype or torch.get_default_dtype())
