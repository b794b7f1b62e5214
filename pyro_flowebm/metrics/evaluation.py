"""Every sample-quality metric that applies to a sample, in one JSON-ready dict."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..core import check_positive
from .density import grid_kl
from .modes import mode_coverage, mode_weight_error
from .points import ArrayLike, as_pair
from .two_sample import energy_distance, median_bandwidth, mmd

__all__ = ["evaluate_samples"]


def _bounding_box(points: Tensor) -> tuple[float, float, float, float]:
    """The bounding box of 2-D points with a 10% margin (1.0 on a degenerate axis)."""
    lo, hi = points.min(0).values, points.max(0).values
    span = hi - lo
    margin = torch.where(span > 0, 0.1 * span, torch.ones_like(span))
    lo, hi = lo - margin, hi + margin
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def evaluate_samples(
    samples: ArrayLike,
    reference: ArrayLike,
    *,
    modes: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    sd: float | None = None,
    log_prob: Callable[[Tensor], Tensor] | None = None,
    extent: Sequence[float] | None = None,
) -> dict[str, float]:
    """Every metric of this module that applies, as a JSON-serializable dict of floats.

    Keys, and when they appear:

    - always: ``"mmd"`` (:func:`mmd`, median-heuristic bandwidth), ``"mmd_bandwidth"``
      (that bandwidth) and ``"energy_distance"`` (:func:`energy_distance`), comparing
      ``samples`` with ``reference``;
    - with ``modes`` and ``sd``: ``"n_modes"``, ``"modes_covered"`` and
      ``"fraction_near_modes"`` (:func:`mode_coverage` with ``radius = 3 * sd``);
    - with ``modes`` and ``weights``: ``"mode_weight_error"`` (:func:`mode_weight_error`,
      with ``radius = 3 * sd`` when ``sd`` is given, nearest centre otherwise);
    - with ``log_prob`` (2-D only): ``"grid_kl"`` (:func:`grid_kl`, 100 x 100 cells) on
      ``extent``, by default the bounding box of ``reference`` with a 10% margin.

    Args:
        samples: Points to judge, shape ``(n, d)``.
        reference: Points from the target, shape ``(m, d)``, e.g. exact draws or data.
        modes: Mode centres ``(K, d)``.
        weights: True mode weights ``(K,)``; needs ``modes``.
        sd: Standard deviation of each mode; needs ``modes``.
        log_prob: True log density (possibly unnormalized) of 2-D points.
        extent: ``(xmin, xmax, ymin, ymax)`` of the KL grid; needs ``log_prob``.

    Returns:
        Metric name to float.

    Raises:
        ValueError: on bad shapes (as the metrics do), or ``weights``/``sd`` without
            ``modes``, or ``extent`` without ``log_prob``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ref = torch.randn(200, 2, generator=g)
        >>> out = evaluate_samples(torch.randn(200, 2, generator=g), ref)
        >>> sorted(out)
        ['energy_distance', 'mmd', 'mmd_bandwidth']
    """
    x, ref = as_pair(samples, reference, ("samples", "reference"))
    if modes is None and (weights is not None or sd is not None):
        raise ValueError("expected modes with weights= or sd=, got modes=None; pass modes=")
    if log_prob is None and extent is not None:
        raise ValueError("expected log_prob with extent=, got log_prob=None; pass log_prob=")

    h = median_bandwidth(x, ref)
    out = {
        "mmd": float(mmd(x, ref, bandwidth=h)),
        "mmd_bandwidth": float(h),
        "energy_distance": float(energy_distance(x, ref)),
    }
    if modes is not None:
        radius = None if sd is None else 3.0 * check_positive("sd", float(sd))
        if radius is not None:
            coverage = mode_coverage(x, modes, radius=radius)
            out["n_modes"] = float(coverage.per_mode.shape[0])
            out["modes_covered"] = float(coverage.covered)
            out["fraction_near_modes"] = coverage.fraction_near_modes
        if weights is not None:
            out["mode_weight_error"] = float(mode_weight_error(x, modes, weights, radius=radius))
    if log_prob is not None:
        if x.shape[1] != 2:
            raise ValueError(
                f"expected 2-D samples for grid_kl (log_prob given), got shape {tuple(x.shape)}"
            )
        box = _bounding_box(ref) if extent is None else extent
        out["grid_kl"] = float(grid_kl(x, log_prob, extent=box))
    return out
