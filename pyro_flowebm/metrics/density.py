"""Densities: KL on a 2-D grid, held-out negative log-likelihood, bits per dimension of images."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import check_int
from ..datasets import dequantize
from .points import ArrayLike, as_points

__all__ = ["bits_per_dim", "compare_nll", "grid_kl", "nll_per_point"]

# Additive smoothing of the histogram probabilities in ``grid_kl`` (an empty cell gets
# probability ~1e-10, not 0, so KL stays finite).
_GRID_EPS = 1e-10


def _check_extent(extent: Sequence[float]) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) as floats, finite and increasing."""
    values = tuple(float(v) for v in extent)
    if len(values) != 4:
        raise ValueError(f"expected extent (xmin, xmax, ymin, ymax), got {tuple(extent)}")
    xmin, xmax, ymin, ymax = values
    if not (all(math.isfinite(v) for v in values) and xmin < xmax and ymin < ymax):
        raise ValueError(
            f"expected extent (xmin, xmax, ymin, ymax) finite and increasing, got {values}"
        )
    return xmin, xmax, ymin, ymax


def grid_kl(
    samples: ArrayLike,
    log_prob: Callable[[Tensor], Tensor],
    *,
    extent: Sequence[float],
    bins: int = 100,
) -> Tensor:
    """KL(p || p̂) on a 2-D grid between a true density and the histogram of samples.

    ``extent = (xmin, xmax, ymin, ymax)`` is cut into ``bins x bins`` equal cells. The
    true law is :math:`p_c \\propto \\exp(\\log p(\\text{centre}_c))`, normalized over the
    cells (``log_prob`` may be unnormalized). The samples give
    :math:`\\hat p_c = (n_c / n + \\epsilon) / (1 + \\epsilon\\, \\text{bins}^2)` with additive
    smoothing :math:`\\epsilon = 10^{-10}` in probability, so an empty cell costs
    :math:`p_c \\log(p_c / \\epsilon)`, large but finite. Samples outside the extent count
    in ``n`` and fall in an extra cell where ``p`` has no mass, so mass off the grid raises
    the KL (it is a proper KL over ``bins² + 1`` cells). The right and top edges belong to
    the last cells. Then :math:`\\mathrm{KL} = \\sum_c p_c \\log(p_c / \\hat p_c)`. Finite
    samples bias it upward by about (number of occupied cells) / (2n); the continuous KL
    is approached as the cells shrink and ``n`` grows.

    Args:
        samples: Points of shape ``(n, 2)``, n >= 1 (tensor or numpy array).
        log_prob: Callable mapping cell centres ``(m, 2)`` (``samples``' dtype and device)
            to log densities ``(m,)``; called without gradients.
        extent: ``(xmin, xmax, ymin, ymax)``, increasing.
        bins: Cells per axis.

    Returns:
        Scalar tensor (nats) in ``samples``' dtype and on its device.

    Raises:
        ValueError: when ``samples`` is not ``(n, 2)``, ``extent`` is not an increasing
            box, ``bins < 1``, or ``log_prob`` returns the wrong shape, NaN or no finite
            value.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(20000, 2, generator=g, dtype=torch.float64)
        >>> normal = lambda p: -0.5 * (p**2).sum(-1)
        >>> kl = grid_kl(x, normal, extent=(-4, 4, -4, 4), bins=20)
        >>> bool(kl < 0.05), bool(grid_kl(x + 1.0, normal, extent=(-4, 4, -4, 4), bins=20) > 0.5)
        (True, True)
    """
    points = as_points("samples", samples)
    if points.shape[1] != 2:
        raise ValueError(
            f"expected samples of shape (n, 2) for a 2-D grid, got shape {tuple(points.shape)}"
        )
    xmin, xmax, ymin, ymax = _check_extent(extent)
    if int(bins) != bins or bins < 1:
        raise ValueError(f"expected bins a positive integer, got {bins}")
    bins = int(bins)
    dtype, device = points.dtype, points.device

    edges_x = torch.linspace(xmin, xmax, bins + 1, dtype=dtype, device=device)
    edges_y = torch.linspace(ymin, ymax, bins + 1, dtype=dtype, device=device)
    cx, cy = (edges_x[:-1] + edges_x[1:]) / 2, (edges_y[:-1] + edges_y[1:]) / 2
    centres = torch.stack(torch.meshgrid(cx, cy, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        logp = torch.as_tensor(log_prob(centres)).to(device=device, dtype=dtype)
    if logp.shape != (bins * bins,):
        raise ValueError(
            f"expected log_prob to return shape ({bins * bins},) for cell centres of shape "
            f"{tuple(centres.shape)}, got shape {tuple(logp.shape)}"
        )
    if bool((torch.isnan(logp) | (logp == math.inf)).any()) or not bool(logp.isfinite().any()):
        raise ValueError(
            "expected log_prob finite (or -inf) on the grid, got NaN, +inf or no finite value"
        )
    log_p = logp - torch.logsumexp(logp, 0)

    data = points.detach()
    inside = (
        (data[:, 0] >= xmin) & (data[:, 0] <= xmax) & (data[:, 1] >= ymin) & (data[:, 1] <= ymax)
    )
    data = data[inside]
    ix = ((data[:, 0] - xmin) / (xmax - xmin) * bins).floor().long().clamp(0, bins - 1)
    iy = ((data[:, 1] - ymin) / (ymax - ymin) * bins).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(ix * bins + iy, minlength=bins * bins).to(dtype)
    q = (counts / points.shape[0] + _GRID_EPS) / (1 + _GRID_EPS * bins * bins)

    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - q.log()), torch.zeros_like(p))
    return terms.sum()


def bits_per_dim(
    model: torch.distributions.Distribution,
    images: Tensor,
    levels: int,
    *,
    num_samples: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""Bits per dimension of quantized images under a continuous density on :math:`[0, 1]^D`.

    Images hold levels :math:`k \in \{0, \dots, L-1\}` stored as :math:`k / L` (see
    :class:`~pyro_flowebm.datasets.ImageSet`). A density :math:`q` of the dequantized
    :math:`v = (k + u)/L`, :math:`u \sim U[0, 1)^D`, bounds the discrete likelihood
    (Theis et al., 2016):

    .. math::

        \log P(k) = \log \int_{[0,1)^D} q\big(\tfrac{k + u}{L}\big) L^{-D}\, du
        \ \ge\ \mathbb E_u\big[\log q\big(\tfrac{k + u}{L}\big)\big] - D \log L,

    and bits per dimension are :math:`-\log_2 P(k) / D`; this returns the bound's estimate,
    an upper bound on the true bits per dimension, averaged over the images and
    ``num_samples`` noise draws each. ``model`` must be normalized: a backbone (a
    :class:`~pyro.distributions.TransformedDistribution`), or a
    :class:`~pyro_flowebm.FlowEBM` with an estimate of :math:`\log Z` attached
    (``ebm.normalized(...)``).

    Args:
        model: a normalized distribution with event shape ``images.shape[1:]``.
        images: ``(N, *event_shape)`` on the lattice :math:`k / L`.
        levels: :math:`L`, the number of intensity levels (17 for digits, 256 for 8 bits).
        num_samples: dequantization draws per image.
        batch_size: images per ``log_prob`` call.
        generator: torch generator of the noise (default: the global one).

    Returns:
        ``(bits per dimension, its standard error over the images)``.

    Example:
        >>> import pyro.distributions as dist
        >>> uniform = dist.Uniform(torch.zeros(1, 2, 2), torch.ones(1, 2, 2)).to_event(3)
        >>> bits_per_dim(uniform, torch.zeros(10, 1, 2, 2), levels=256)[0]  # log2(256)
        8.0

    References:
        Theis, van den Oord, Bethge. A note on the evaluation of generative models.
        ICLR 2016. arXiv:1511.01844.
    """
    check_int("levels", levels, 2)
    per_image = nll_per_point(
        model, images, levels=levels, num_samples=num_samples, batch_size=batch_size,
        generator=generator,
    )  # fmt: skip
    return float(per_image.mean()), float(per_image.std() / math.sqrt(per_image.numel()))


def nll_per_point(
    model: torch.distributions.Distribution,
    data: Tensor,
    *,
    levels: int | None = None,
    num_samples: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The negative log-likelihood of each point under a normalized model, float64: nats
    per point, or with ``levels`` bits per dimension of dequantized images (the bound of
    :func:`bits_per_dim`, averaged over ``num_samples`` noise draws).

    Example:
        >>> import pyro.distributions as dist
        >>> nll_per_point(dist.Normal(0.0, 1.0), torch.zeros(2)).round(decimals=4).tolist()
        [0.9189, 0.9189]
    """
    check_int("num_samples", num_samples, 1)
    check_int("batch_size", batch_size, 1)
    if getattr(model, "log_z", 0.0) is None:
        raise ValueError(
            "expected a normalized model, got a FlowEBM without an estimate of log Z: use "
            "ebm.normalized(pyro_flowebm.infer.estimate_log_z(ebm, ...))"
        )
    event_shape, what = model.event_shape, "images" if levels else "points"
    if data.dim() != len(event_shape) + 1 or data.shape[1:] != event_shape:
        shape = ", ".join(map(str, event_shape))
        raise ValueError(f"expected {what} of shape (N, {shape}), got {tuple(data.shape)}")
    if data.shape[0] < 2:
        raise ValueError(f"expected at least 2 {what} for a standard error, got {data.shape[0]}")
    log_q = torch.zeros(data.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for _ in range(num_samples if levels else 1):
            for start in range(0, data.shape[0], batch_size):
                batch = data[start : start + batch_size]
                if levels:
                    batch = dequantize(batch, levels, generator=generator)
                log_q[start : start + batch_size] += model.log_prob(batch).double().cpu()
    if not levels:
        return -log_q
    d = event_shape.numel()
    return -(log_q / num_samples - d * math.log(levels)) / (d * math.log(2))


def compare_nll(
    backbone: torch.distributions.Distribution,
    ebm: torch.distributions.Distribution,
    data: Tensor,
    *,
    levels: int | None = None,
    num_samples: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Held-out negative log-likelihood of a backbone and of its normalized EBM, paired.

    Both models see the same points (and, for images, the same dequantization noise).
    The EBM's standard error adds its :math:`\log Z` estimate's (``ebm.log_z_stderr``) in
    quadrature to the spread over the points; so does that of ``improvement``, the
    backbone's NLL minus the EBM's per point (positive: the tilt fits the data better), whose
    spread over the points is far smaller than either NLL's.

    Args:
        backbone: the normalized backbone :math:`q`.
        ebm: the EBM with :math:`\log Z` attached (``ebm.normalized(estimate)``).
        data: held-out points ``(N, *event_shape)``.
        levels: images: intensity levels; the unit is then bits per dimension.
        num_samples: images: dequantization draws per image.
        seed: seeds the dequantization noise.

    Returns:
        ``{"unit", "n", "backbone", "ebm", "improvement"}``, the last three each
        ``{"value", "stderr"}``.

    Example:
        >>> import pyro.distributions as dist
        >>> q = dist.Normal(torch.zeros(1), 1.0).to_event(1)
        >>> out = compare_nll(q, q, torch.zeros(4, 1))
        >>> out["unit"], out["improvement"]["value"]
        ('nats per point', 0.0)
    """
    per_point = {}
    for name, model in (("backbone", backbone), ("ebm", ebm)):
        generator = torch.Generator().manual_seed(seed)
        per_point[name] = nll_per_point(
            model, data, levels=levels, num_samples=num_samples, generator=generator
        )
    n = data.shape[0]
    # Images: log Z's error spread over the dimensions, in bits.
    scale = 1 / (data[0].numel() * math.log(2)) if levels else 1.0
    log_z_stderr = (getattr(ebm, "log_z_stderr", None) or 0.0) * scale

    def summary(values: Tensor, extra: float) -> dict[str, float]:
        stderr = math.sqrt(float(values.var()) / n + extra**2)
        return {"value": float(values.mean()), "stderr": stderr}

    return {
        "unit": "bits per dim" if levels else "nats per point",
        "n": n,
        "backbone": summary(per_point["backbone"], 0.0),
        "ebm": summary(per_point["ebm"], log_z_stderr),
        "improvement": summary(per_point["backbone"] - per_point["ebm"], log_z_stderr),
    }
