"""Modes: the nearest mode of each point, coverage of known modes, and mode-weight error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core import check_positive, to_numpy
from .points import EXACT_DISTANCE, ArrayLike, as_points, as_tensor

__all__ = ["ModeCoverage", "assign_modes", "mode_coverage", "mode_weight_error"]

# Mode weights must sum to one within this tolerance.
_WEIGHT_TOL = 1e-6


def assign_modes(x: ArrayLike, modes: ArrayLike) -> np.ndarray:
    """Index of the nearest mode centre (Euclidean) for every point.

    Args:
        x: Points of shape ``(..., d)``.
        modes: Mode centres of shape ``(K, d)``.

    Returns:
        Integer array of shape ``x.shape[:-1]`` with values in ``0, ..., K - 1``; ties go to
        the lower index.

    Raises:
        ValueError: when ``modes`` is not 2-D or empty, the last axes disagree, or ``x``
            holds non-finite values.

    Example:
        >>> modes = np.array([[0.0, 0.0], [5.0, 5.0]])
        >>> assign_modes(np.array([[0.1, -0.2], [4.0, 6.0], [3.0, 3.0]]), modes)
        array([0, 1, 1])
    """
    points = to_numpy(x)
    centres = to_numpy(modes)
    if centres.ndim != 2 or centres.shape[0] == 0:
        raise ValueError(
            f"expected modes of shape (K, d) with K >= 1, got shape {tuple(centres.shape)}"
        )
    if points.ndim == 0 or points.shape[-1] != centres.shape[1]:
        raise ValueError(
            f"expected x of shape (..., {centres.shape[1]}) to match modes of shape "
            f"{tuple(centres.shape)}, got shape {tuple(points.shape)}"
        )
    if not np.all(np.isfinite(points)):
        raise ValueError("expected finite x, got NaN or infinite values; drop diverged draws")
    sq_dist = np.sum((points[..., None, :] - centres) ** 2, axis=-1)
    return np.argmin(sq_dist, axis=-1)


def _centres(modes: Any, x: Tensor) -> Tensor:
    """Mode centres of shape (K, d) matching points x, in x's dtype and on x's device."""
    centres = as_tensor(modes)
    if centres.ndim != 2 or centres.shape[0] == 0 or centres.shape[1] != x.shape[1]:
        raise ValueError(
            f"expected modes of shape (K, {x.shape[1]}) with K >= 1 to match x of shape "
            f"{tuple(x.shape)}, got shape {tuple(centres.shape)}"
        )
    return centres.to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True, eq=False)
class ModeCoverage:
    """Result of :func:`mode_coverage`.

    Attributes:
        per_mode: Tensor of shape ``(K,)``: fraction of all points within ``radius`` of
            each mode (a point near two modes counts for both).
        covered: Number of modes with at least one point within ``radius``.
        fraction_near_modes: Fraction of all points within ``radius`` of some mode.
    """

    per_mode: Tensor
    covered: int
    fraction_near_modes: float


def mode_coverage(x: ArrayLike, modes: ArrayLike, *, radius: float) -> ModeCoverage:
    """How many modes a sample reaches and how much of it lies near some mode.

    A point is within ``radius`` of a mode when its Euclidean distance is ``<= radius``.
    With Gaussian modes of standard deviation ``sd``, ``radius = 3 * sd`` makes
    ``fraction_near_modes`` the fraction of samples within 3 sd of a mode centre.

    Args:
        x: Points of shape ``(n, d)``, n >= 1 (tensor or numpy array).
        modes: Mode centres of shape ``(K, d)``.
        radius: Distance ``> 0`` within which a point counts for a mode.

    Returns:
        A :class:`ModeCoverage`.

    Raises:
        ValueError: when ``x`` is not ``(n, d)``, ``modes`` is not ``(K, d)`` with the same
            ``d``, or ``radius`` is not positive.

    Example:
        >>> modes = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
        >>> x = torch.tensor([[0.1, 0.0], [4.5, 0.0], [2.5, 2.5], [5.0, 0.2]])
        >>> c = mode_coverage(x, modes, radius=1.0)
        >>> c.per_mode.tolist(), c.covered, c.fraction_near_modes
        ([0.25, 0.5, 0.0], 2, 0.75)
    """
    points = as_points("x", x)
    centres = _centres(modes, points)
    r = check_positive("radius", float(radius))
    near = torch.cdist(points, centres, compute_mode=EXACT_DISTANCE) <= r  # (n, K)
    per_mode = near.to(points.dtype).mean(0)
    return ModeCoverage(
        per_mode=per_mode,
        covered=int(near.any(0).sum()),
        fraction_near_modes=float(near.any(1).to(points.dtype).mean()),
    )


def mode_weight_error(
    x: ArrayLike, modes: ArrayLike, weights: ArrayLike, *, radius: float | None = None
) -> Tensor:
    """L1 distance between the sample's mode weights and the true mode weights.

    The sample's weight of mode k is the fraction of points whose nearest centre is k
    (:func:`assign_modes`). With ``radius``, only points within
    ``radius`` (``<=``) of their nearest centre count and the weights are renormalized over
    them, so stray points do not dilute the comparison; if no point is within ``radius``
    the result is 2.0, the maximum of an L1 distance between two probability vectors.

    Args:
        x: Points of shape ``(n, d)``, n >= 1 (tensor or numpy array).
        modes: Mode centres of shape ``(K, d)``.
        weights: True weights of shape ``(K,)``, non-negative and summing to 1 (within
            1e-6).
        radius: Optional distance ``> 0``; see above.

    Returns:
        Scalar tensor in ``[0, 2]``, in ``x``'s dtype and on ``x``'s device.

    Raises:
        ValueError: when ``x``, ``modes`` or ``weights`` have the wrong shapes, ``weights``
            are negative or do not sum to 1, or ``radius`` is not positive.

    Example:
        >>> modes = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
        >>> x = torch.tensor([[-3.1, 0.0], [2.9, 0.1], [3.2, 0.0], [3.0, -0.3]])
        >>> float(mode_weight_error(x, modes, torch.tensor([0.5, 0.5])))
        0.5
    """
    points = as_points("x", x)
    centres = _centres(modes, points)
    k = centres.shape[0]
    w = as_tensor(weights)
    if w.shape != (k,):
        raise ValueError(
            f"expected weights of shape ({k},) to match modes of shape {tuple(centres.shape)}, "
            f"got shape {tuple(w.shape)}"
        )
    w = w.to(device=points.device, dtype=points.dtype)
    total = float(w.sum())
    if bool((w < 0).any()) or abs(total - 1.0) > _WEIGHT_TOL:
        raise ValueError(
            f"expected non-negative weights summing to 1 (within {_WEIGHT_TOL}), "
            f"got {w.tolist()} with sum {total}"
        )
    labels = torch.as_tensor(assign_modes(points, centres), device=points.device)
    if radius is not None:
        r = check_positive("radius", float(radius))
        nearest = torch.cdist(points, centres, compute_mode=EXACT_DISTANCE).min(1).values
        labels = labels[nearest <= r]
        if labels.numel() == 0:
            return torch.tensor(2.0, dtype=points.dtype, device=points.device)
    sampled = torch.bincount(labels, minlength=k).to(points.dtype) / labels.numel()
    return (sampled - w).abs().sum()
