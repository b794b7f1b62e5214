"""Plots of chains: paths over a 2-D density, image chains over time, mode occupancy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..core import to_numpy
from ..metrics.points import ArrayLike
from .summary import MixingSummary, posterior_values

if TYPE_CHECKING:
    from arviz import InferenceData
    from matplotlib.axes import Axes

__all__ = ["image_grid", "plot_chains", "plot_image_chains", "plot_occupancy"]

# Points per axis of the grid on which ``plot_chains`` evaluates ``log_density``.
_GRID_SIZE = 120
# ``plot_chains`` shades log densities within this many nats of the grid's maximum.
_LOG_DENSITY_RANGE = 10.0


def _eval_log_density(log_density: Callable[[Tensor], Tensor], points: np.ndarray) -> np.ndarray:
    """Evaluate a torch log density on points of shape (m, 2), without gradients."""
    with torch.no_grad():
        result = to_numpy(log_density(torch.from_numpy(points).to(torch.get_default_dtype())))
    if result.size != points.shape[0]:
        raise ValueError(
            f"expected log_density to return shape ({points.shape[0]},) for points of "
            f"shape {points.shape}, got shape {result.shape}"
        )
    return result.astype(np.float64).reshape(-1)


def _extent(
    values: np.ndarray, points: np.ndarray | None, extent: tuple[float, ...] | None
) -> tuple[float, float, float, float]:
    """``extent`` checked, or the bounding box of the draws and points with a 10% margin."""
    if extent is None:
        cloud = values.reshape(-1, 2)
        if points is not None:
            cloud = np.concatenate([cloud, points])
        lo, hi = np.nanmin(cloud, axis=0), np.nanmax(cloud, axis=0)
        span = hi - lo
        margin = np.where(span > 0, 0.1 * span, 1.0)
        lo, hi = lo - margin, hi + margin
        extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    xmin, xmax, ymin, ymax = (float(v) for v in extent)
    if not (xmin < xmax and ymin < ymax):
        raise ValueError(f"expected extent (xmin, xmax, ymin, ymax) increasing, got {extent}")
    return xmin, xmax, ymin, ymax


def _shade_log_density(
    ax: Axes, log_density: Callable[[Tensor], Tensor], extent: tuple[float, float, float, float]
) -> None:
    """Filled contours of ``log_density`` within 10 nats of its maximum on a grid."""
    xmin, xmax, ymin, ymax = extent
    gx, gy = np.meshgrid(np.linspace(xmin, xmax, _GRID_SIZE), np.linspace(ymin, ymax, _GRID_SIZE))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=-1)
    logp = _eval_log_density(log_density, grid).reshape(gx.shape)
    finite = np.isfinite(logp)
    if finite.any():
        # Clip far below the maximum so the modes' shapes, not the tails, get the levels.
        top = logp[finite].max()
        shown = np.clip(np.where(finite, logp, -np.inf), top - _LOG_DENSITY_RANGE, top)
        ax.contourf(gx, gy, shown, levels=12, cmap="Greys", alpha=0.5, zorder=0)


def plot_chains(
    idata: InferenceData,
    *,
    var_name: str = "x",
    data: ArrayLike | None = None,
    log_density: Callable[[Tensor], Tensor] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    extent: tuple[float, float, float, float] | None = None,
) -> Axes:
    """Plot each chain's path of a 2-D variable over data points and a density.

    Each chain is one thin line with small points in its own colour (``ax.lines`` holds
    exactly one line per chain); each chain's first kept draw is a black-edged star.
    Underneath, ``data`` is scattered in grey and ``log_density`` is drawn as filled
    contours of its values within 10 nats of the maximum on a grid over ``extent``.

    Args:
        idata: InferenceData whose posterior holds ``var_name`` of shape (chain, draw, 2).
        var_name: Posterior variable to draw.
        data: Points of shape ``(n, 2)`` (numpy or torch), e.g. the training data.
        log_density: Callable mapping a tensor of points ``(m, 2)`` (torch's default
            dtype) to log densities ``(m,)``, e.g. ``ebm.log_prob``; called without
            gradients.
        ax: Axes to draw on; a new figure is made when ``None``.
        title: Axes title; default names the variable, chains and draws.
        extent: ``(xmin, xmax, ymin, ymax)``; default is the bounding box of the draws and
            ``data`` with a 10% margin.

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: when the variable's shape is not (chain, draw, 2), ``data`` is not
            ``(n, 2)``, or ``extent`` is not an increasing box.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(3, 50, 2)).cumsum(axis=1)
        >>> from pyro_flowebm.io import to_inference_data
        >>> ax = plot_chains(to_inference_data({"x": x}), log_density=lambda p: -(p**2).sum(1))
        >>> len(ax.lines)
        3
        >>> import matplotlib.pyplot as plt
        >>> plt.close(ax.figure)
    """
    import matplotlib.pyplot as plt

    values = posterior_values(idata, var_name)
    if values.ndim != 3 or values.shape[-1] != 2:
        raise ValueError(
            f"expected posterior {var_name!r} of shape (chain, draw, 2) to plot, "
            f"got shape {tuple(values.shape)}"
        )
    n_chains, n_draws, _ = values.shape
    points = None
    if data is not None:
        points = to_numpy(data)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"expected data of shape (n, 2), got shape {tuple(points.shape)}")

    xmin, xmax, ymin, ymax = extent = _extent(values, points, extent)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 5.0))
    if log_density is not None:
        _shade_log_density(ax, log_density, extent)
    if points is not None:
        ax.scatter(points[:, 0], points[:, 1], s=2, color="0.5", alpha=0.4, lw=0, zorder=1)
    colours = [f"C{c % 10}" for c in range(n_chains)]
    for c in range(n_chains):
        ax.plot(*values[c].T, "-", marker=".", markersize=2, linewidth=0.5, alpha=0.8,
                color=colours[c], label=f"chain {c}", zorder=2)  # fmt: skip
    ax.scatter(values[:, 0, 0], values[:, 0, 1], marker="*", s=80, c=colours,
               edgecolors="black", linewidths=0.8, zorder=3, label="first draw")  # fmt: skip
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_title(title if title is not None else f"{var_name}: {n_chains} chains × {n_draws} draws")
    if n_chains <= 10:
        ax.legend(loc="upper right", fontsize="small")
    return ax


def image_grid(images: ArrayLike, num_columns: int, *, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` into one RGB array in ``[0, 1]`` of shape
    ``(rows (H + pad) + pad, num_columns (W + pad) + pad, 3)``: one channel is shown as
    grey, values are clipped to ``[0, 1]`` (the pixel scale of dequantized images), padding
    is white.

    Example:
        >>> image_grid(np.zeros((5, 1, 8, 8)), num_columns=4).shape  # 2 rows of 4
        (19, 37, 3)
    """
    images = np.clip(to_numpy(images).astype(np.float64), 0.0, 1.0)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(
            "expected at least one image of shape (N, C, H, W) with C = 1 or 3, "
            f"got shape {images.shape}"
        )
    if num_columns < 1:
        raise ValueError(f"expected num_columns >= 1, got {num_columns}")
    n, c, h, w = images.shape
    rows = -(-n // num_columns)
    grid = np.ones((rows * (h + pad) + pad, num_columns * (w + pad) + pad, 3))
    for i, image in enumerate(images):
        r, col = divmod(i, num_columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = np.repeat(image, 3 // c, axis=0).transpose(1, 2, 0)
    return grid


def plot_image_chains(
    idata: InferenceData,
    *,
    var_name: str = "x",
    num_chains: int = 8,
    num_draws: int = 12,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Draws of image chains over time: one row a chain, one column a time.

    The first ``num_chains`` chains, each at ``num_draws`` evenly spaced draws from the first
    to the last kept one, tiled by :func:`image_grid`: reading along a row shows whether
    a chain keeps producing realistic images and whether it moves between classes.

    Args:
        idata: InferenceData whose posterior holds ``var_name`` of shape
            ``(chain, draw, C, H, W)``.
        var_name: Posterior variable to draw.
        num_chains: chains shown (at most those there are).
        num_draws: draws shown per chain (at most those there are).
        ax: Axes to draw on; a new figure is made when ``None``.
        title: Axes title; default names the variable, chains and draws.

    Returns:
        The Axes.
    """
    values = posterior_values(idata, var_name)
    if values.ndim != 5:
        raise ValueError(
            f"expected {var_name!r} of shape (chain, draw, C, H, W), got {values.shape}"
        )
    if num_chains < 1 or num_draws < 1:
        raise ValueError(
            f"expected num_chains >= 1 and num_draws >= 1, got {num_chains}, {num_draws}"
        )
    n_chains, n_draws = min(num_chains, values.shape[0]), min(num_draws, values.shape[1])
    times = np.linspace(0, values.shape[1] - 1, n_draws).round().astype(int)
    picked = values[:n_chains][:, times].reshape(-1, *values.shape[2:])
    if ax is None:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

        figure = Figure(figsize=(0.6 * n_draws + 1, 0.6 * n_chains + 0.8))
        ax = figure.subplots()
    ax.imshow(image_grid(picked, n_draws), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"draws {times[0]} to {times[-1]} (evenly spaced) →")
    ax.set_ylabel("chain")
    default = f"{var_name}: {n_chains} of {values.shape[0]} chains over {values.shape[1]} draws"
    ax.set_title(title if title is not None else default)
    return ax


def plot_occupancy(
    summary: MixingSummary, *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Mode occupancy of every chain as one image: a row a chain, a column a mode.

    Each cell is the fraction of the chain's draws nearest to the mode (white: none, which
    a table of hundreds of chains would hide). Beside each row, the chain's number of mode
    switches; under each column, the mode's share of all draws.

    Args:
        summary: a :class:`~pyro_flowebm.diagnostics.MixingSummary` with modes.
        ax: Axes to draw on; a new figure is made when ``None``.
        title: Axes title; default names the chains and modes.

    Returns:
        The Axes.

    Example:
        >>> from pyro_flowebm.diagnostics import mixing_summary
        >>> from pyro_flowebm.io import to_inference_data
        >>> x = np.random.default_rng(0).normal(size=(64, 50, 2))
        >>> s = mixing_summary(to_inference_data({"x": x}), modes=np.array([[-1.0, 0], [1, 0]]))
        >>> plot_occupancy(s).get_images()[0].get_array().shape
        (64, 2)
    """
    if summary.occupancy is None:
        raise ValueError("expected a mixing summary with modes (occupancy), got one without")
    occupancy = summary.occupancy.to_numpy(dtype=float)
    n_chains, n_modes = occupancy.shape
    if ax is None:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

        height = min(12.0, 1.5 + 0.06 * n_chains)
        ax = Figure(figsize=(min(12.0, 2.5 + 0.5 * n_modes), height)).subplots()
    shown = np.ma.masked_equal(occupancy, 0.0)
    image = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                      interpolation="nearest")  # fmt: skip
    ax.set_xticks(range(n_modes))
    shares = occupancy.mean(0)
    ax.set_xticklabels([f"{k}\n{share:.2f}" for k, share in enumerate(shares)], fontsize="small")
    ax.set_xlabel("mode (and its share of all draws)")
    ax.set_ylabel("chain")
    if n_chains <= 32:
        ax.set_yticks(range(n_chains))
        labels = [f"{c} ({int(t)})" for c, t in enumerate(summary.transitions)]
        ax.set_yticklabels(labels, fontsize="small")
        ax.set_ylabel("chain (mode switches)")
    ax.figure.colorbar(image, ax=ax, label="fraction of the chain's draws")
    default = f"mode occupancy: {n_chains} chains x {n_modes} modes (white: never visited)"
    ax.set_title(title if title is not None else default)
    return ax
