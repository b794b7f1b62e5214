"""2-D toy data sets with exact samplers, and their modes and log densities where known."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from ..core import check_int

__all__ = ["TOYS", "Toy", "eight_gaussians", "eight_gaussians_modes"]


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
    check_int("n", n, 0)
    modes = eight_gaussians_modes(radius, torch.float64)
    k = torch.randint(8, (n,), generator=generator)
    x = modes[k] + sd * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.to(dtype or torch.get_default_dtype())


@dataclass(frozen=True, eq=False)
class Toy:
    """A 2-D toy data set: an exact sampler and, where known, its modes and log density.

    Tensors held here (``modes``, ``weights``) are float64 constants; cast them to the
    dtype of the data they are compared with. ``eq=False``: toys compare by identity, as
    their tensor fields have no single truth value.

    Attributes:
        name: key in :data:`TOYS`.
        description: one line on what the distribution is.
        sample: ``sample(n, *, generator=None, dtype=None)``, exact draws of shape
            ``(n, 2)``, in ``dtype`` (default: torch's default dtype).
        modes: ``(K, 2)`` mode centres of a Gaussian mixture, else ``None``.
        weights: ``(K,)`` mixture weights summing to 1, else ``None``.
        sd: standard deviation of the isotropic mixture components, else ``None``.
        log_prob: exact, normalized log density of points ``(..., 2)``, in their dtype,
            where it is analytic, else ``None``.

    Example:
        >>> toy = TOYS["mixture_unequal"]
        >>> toy.sample(500, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([500, 2])
        >>> toy.weights.sum().item()
        1.0
    """

    name: str
    description: str
    sample: Callable[..., Tensor]
    modes: Tensor | None = None
    weights: Tensor | None = None
    sd: float | None = None
    log_prob: Callable[[Tensor], Tensor] | None = None


def _out(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    # Samplers compute in float64 so that draws of a seed agree across output dtypes.
    return x.to(dtype or torch.get_default_dtype())


def _categorical(weights: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    # Inverse CDF rather than torch.multinomial, which refuses n = 0.
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    k = torch.searchsorted(weights.cumsum(0), u, right=True)
    return k.clamp_max(len(weights) - 1)


def _mixture_log_prob(modes: Tensor, weights: Tensor, sd: float) -> Callable[[Tensor], Tensor]:
    def log_prob(x: Tensor) -> Tensor:
        mix = torch.distributions.Categorical(probs=weights.to(x))
        comp = torch.distributions.Independent(torch.distributions.Normal(modes.to(x), sd), 1)
        return torch.distributions.MixtureSameFamily(mix, comp).log_prob(x)

    return log_prob


# Eight Gaussians: the existing sampler with its defaults.
_EIGHT_SD = 0.15

# Mixture with unequal weights: far apart compared with sd (nearest modes 8.5 sd apart).
_UNEQUAL_MODES = torch.tensor(
    [[-3.0, 3.0], [3.0, 3.0], [0.0, 0.0], [3.0, -3.0], [-3.0, -3.0]], dtype=torch.float64
)
_UNEQUAL_WEIGHTS = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
_UNEQUAL_SD = 0.5


def _mixture_unequal(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    check_int("n", n, 0)
    k = _categorical(_UNEQUAL_WEIGHTS, n, generator)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(_UNEQUAL_MODES[k] + _UNEQUAL_SD * eps, dtype)


# Rings: a point uniform on a circle of radius r_k (k uniform), plus isotropic noise.
_RING_RADII = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
_RING_SD = 0.1


def _rings(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    check_int("n", n, 0)
    k = torch.randint(len(_RING_RADII), (n,), generator=generator)
    theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    circle = _RING_RADII[k, None] * torch.stack([theta.cos(), theta.sin()], dim=-1)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(circle + _RING_SD * eps, dtype)


def _rings_log_prob(x: Tensor) -> Tensor:
    # Averaging N(x; r u(θ), sd² I) over θ gives exp(-(s² + r²) / 2sd²) I0(s r / sd²) / 2π sd²
    # with s = |x|; I0(z) = i0e(z) e^z keeps it finite for the large z of thin rings.
    r = _RING_RADII.to(x)
    s = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    var = _RING_SD**2
    log_terms = -((s - r) ** 2) / (2 * var) + torch.special.i0e(s * r / var).log()
    log_w = -math.log(len(_RING_RADII))
    return torch.logsumexp(log_terms, dim=-1) + log_w - math.log(2 * math.pi * var)


# Two spirals: arm 0 is c(t) = a t (-cos t, sin t), t = 3π sqrt(u); arm 1 is -c(t).
_SPIRAL_TURNS = 3 * math.pi
_SPIRAL_SCALE = 4.0 / _SPIRAL_TURNS  # outer end at radius 4
_SPIRAL_SD = 0.1


def _spiral_curve(t: Tensor) -> Tensor:
    return _SPIRAL_SCALE * t[..., None] * torch.stack([-t.cos(), t.sin()], dim=-1)


def _two_spirals(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    check_int("n", n, 0)
    # sqrt(u) makes the draws roughly uniform along the arc, as in FFJORD's "2spirals".
    t = _SPIRAL_TURNS * torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    sign = 1 - 2 * torch.randint(2, (n, 1), generator=generator, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(sign * _spiral_curve(t) + _SPIRAL_SD * eps, dtype)


# Checkerboard: uniform on the 8 "black" cells of a 4 x 4 board of side-2 cells on [-4, 4)².
_CELL = 2.0
_BLACK_CELLS = torch.tensor(
    [[i, j] for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0],
    dtype=torch.float64,
)


def _checkerboard(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    check_int("n", n, 0)
    k = torch.randint(len(_BLACK_CELLS), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return _out(_CELL * (_BLACK_CELLS[k] + u), dtype)


def _checkerboard_log_prob(x: Tensor) -> Tensor:
    cell = torch.floor(x / _CELL)
    inside = ((cell >= -2) & (cell <= 1)).all(-1) & (cell.sum(-1) % 2 == 0)
    area = len(_BLACK_CELLS) * _CELL**2
    value = torch.full_like(x[..., 0], -math.log(area))
    return torch.where(inside, value, torch.full_like(value, -math.inf))


# Two moons (scikit-learn's make_moons with t uniform), centred and scaled by 2.
_MOONS_SCALE = 2.0
_MOONS_SD = 0.1


def _two_moons(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    check_int("n", n, 0)
    moon = torch.randint(2, (n, 1), generator=generator, dtype=torch.float64)
    t = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.stack([t.cos() - 0.5, t.sin() - 0.25], dim=-1)
    # The lower moon is the upper one reflected through the centre (0.5, 0.25).
    x = _MOONS_SCALE * (1 - 2 * moon) * upper
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(x + _MOONS_SD * eps, dtype)


# Pinwheel (FFJORD's): 5 arms, each a Gaussian bent by an angle growing with the radius.
_PINWHEEL_ARMS = 5
_PINWHEEL_RADIAL_SD = 0.3
_PINWHEEL_TANGENTIAL_SD = 0.1
_PINWHEEL_RATE = 0.25
_PINWHEEL_SCALE = 2.0


def _pinwheel(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    check_int("n", n, 0)
    arm = torch.randint(_PINWHEEL_ARMS, (n,), generator=generator, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    a = 1.0 + _PINWHEEL_RADIAL_SD * eps[:, 0]
    b = _PINWHEEL_TANGENTIAL_SD * eps[:, 1]
    angle = 2 * math.pi * arm / _PINWHEEL_ARMS + _PINWHEEL_RATE * a.exp()
    c, s = angle.cos(), angle.sin()
    # (a, b) times the rotation [[c, -s], [s, c]] from the right, as in FFJORD.
    x = torch.stack([a * c + b * s, -a * s + b * c], dim=-1)
    return _out(_PINWHEEL_SCALE * x, dtype)


# Read-only: the registry is shared by every caller.
TOYS: Mapping[str, Toy] = MappingProxyType(
    {
        toy.name: toy
        for toy in [
            Toy(
                "eight_gaussians",
                "8 equal-weight Gaussians (sd 0.15) on a circle of radius 4, mode k at k·45°",
                eight_gaussians,
                modes=eight_gaussians_modes(dtype=torch.float64),
                weights=torch.full((8,), 1 / 8, dtype=torch.float64),
                sd=_EIGHT_SD,
                log_prob=_mixture_log_prob(
                    eight_gaussians_modes(dtype=torch.float64),
                    torch.full((8,), 1 / 8, dtype=torch.float64),
                    _EIGHT_SD,
                ),
            ),
            Toy(
                "rings",
                "4 equally likely circles of radii 1-4, uniform angle, Gaussian noise sd 0.1",
                _rings,
                log_prob=_rings_log_prob,
            ),
            Toy(
                "two_spirals",
                "2 interleaved spiral arms (1.5 turns, outer radius 4), x -> -x symmetric, sd 0.1",
                _two_spirals,
            ),
            Toy(
                "checkerboard",
                "uniform on the 8 black side-2 squares of a 4 x 4 board on [-4, 4)^2",
                _checkerboard,
                log_prob=_checkerboard_log_prob,
            ),
            Toy(
                "two_moons",
                "2 equally likely interleaved half circles of radius 2, Gaussian noise sd 0.1",
                _two_moons,
            ),
            Toy(
                "pinwheel",
                "5 curved arms, invariant under rotation by 72 degrees (FFJORD's pinwheel)",
                _pinwheel,
            ),
            Toy(
                "mixture_unequal",
                "5 Gaussians (sd 0.5) with weights 0.4, 0.3, 0.15, 0.1, 0.05",
                _mixture_unequal,
                modes=_UNEQUAL_MODES,
                weights=_UNEQUAL_WEIGHTS,
                sd=_UNEQUAL_SD,
                log_prob=_mixture_log_prob(_UNEQUAL_MODES, _UNEQUAL_WEIGHTS, _UNEQUAL_SD),
            ),
        ]
    }
)
