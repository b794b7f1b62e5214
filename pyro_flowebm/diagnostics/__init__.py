"""Mixing diagnostics for MCMC chains: ArviZ conversion, mode coverage, chain plots, the report."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._atomic import atomic_write

with warnings.catch_warnings():
    # ArviZ 0.23 warns once per day on import that 1.x is coming (FutureWarning). It is
    # about the library, not about how we call it, and it turns into an import error under
    # `filterwarnings = error` on the first run of the day. Every ArviZ call of the package
    # lives in this package (here and in html_report.py, which takes `az` from here), so this
    # is the one place that imports ArviZ.
    warnings.filterwarnings(
        "ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning
    )
    import arviz as az

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "FALSE_CONVERGENCE",
    "MIXING",
    "MixingSummary",
    "NOT_MIXING",
    "Report",
    "Verdict",
    "assign_modes",
    "image_grid",
    "mixing_summary",
    "plot_chains",
    "plot_image_chains",
    "read_netcdf",
    "report",
    "to_inference_data",
    "verdict",
    "write_netcdf",
]

ArrayLike = torch.Tensor | np.ndarray

# Columns of the ArviZ summary shown by ``MixingSummary.__str__``.
_REPORT_COLUMNS = ("mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat")
# Vehtari et al. (2021) recommend R-hat < 1.01 before trusting a summary.
_RHAT_THRESHOLD = 1.01
# Points per axis of the grid on which ``plot_chains`` evaluates ``log_density``.
_GRID_SIZE = 120
# ``plot_chains`` shades log densities within this many nats of the grid's maximum.
_LOG_DENSITY_RANGE = 10.0


def _fmt(value: float) -> str:
    """Three decimals, or three significant digits for huge values (R-hat of stuck chains)."""
    return f"{value:.3f}" if abs(value) < 1e3 or not math.isfinite(value) else f"{value:.3g}"


def _to_numpy(value: Any) -> np.ndarray:
    """Detach a tensor (or take an array-like) and return a CPU numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
            value = value.to(torch.float32)
        return value.numpy()
    return np.asarray(value)


def _netcdf_safe(value: Any) -> str | int | float:
    """Map an attribute value to a type every NetCDF engine can store."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _check_group(
    group: str, arrays: Mapping[str, Any], leading: tuple[int, int] | None, ref: str | None
) -> tuple[dict[str, np.ndarray], tuple[int, int] | None, str | None]:
    """Convert one group to numpy and check every array's leading (chain, draw) axes."""
    out = {}
    for name, value in arrays.items():
        array = _to_numpy(value)
        if array.ndim < 2:
            raise ValueError(
                f"expected {group} {name!r} with leading (chain, draw) axes, "
                f"got shape {tuple(array.shape)}"
            )
        if leading is None:
            leading, ref = (array.shape[0], array.shape[1]), f"{group} {name!r}"
        elif array.shape[:2] != leading:
            raise ValueError(
                f"expected {group} {name!r} with (chain, draw) = {leading} like {ref}, "
                f"got shape {tuple(array.shape)}"
            )
        out[str(name)] = array
    return out, leading, ref


def to_inference_data(
    posterior: Mapping[str, ArrayLike],
    sample_stats: Mapping[str, ArrayLike] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Build an :class:`arviz.InferenceData` from arrays with leading (chain, draw) axes.

    Every event axis ``i`` of a variable ``v`` gets the dimension name ``f"{v}_dim_{i}"``
    explicitly, so the layout does not depend on ArviZ defaults. Tensors are detached and
    moved to CPU. ``attrs`` are stored on the ``posterior`` and ``sample_stats`` groups and
    on the InferenceData itself, made NetCDF-safe: ``bool`` becomes ``int``, ``None`` becomes
    ``"none"``, ``str``/``int``/``float`` are kept and anything else is stored as its JSON
    text (or ``str`` when it is not JSON-serializable), so the result survives
    ``idata.to_netcdf(path)`` and ``arviz.from_netcdf(path)``.

    Args:
        posterior: Variable name to array of shape ``(chain, draw, *event)``.
        sample_stats: Statistic name to array of shape ``(chain, draw, ...)``, for example
            ``{"lp": ..., "diverging": ..., "acceptance_rate": ...}``.
        attrs: Metadata such as the sampler's settings or the seed.

    Returns:
        InferenceData with a ``posterior`` group (and ``sample_stats`` when given).

    Raises:
        ValueError: when ``posterior`` is empty, an array has fewer than two axes, the
            arrays disagree on (chain, draw), or a name in both groups has two event ranks.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> idata = to_inference_data(
        ...     {"x": rng.normal(size=(4, 100, 2))},
        ...     {"lp": rng.normal(size=(4, 100))},
        ...     attrs={"step_size": 0.1, "adapted": True},
        ... )
        >>> idata.posterior["x"].dims
        ('chain', 'draw', 'x_dim_0')
        >>> int(idata.posterior.attrs["adapted"])
        1
    """
    if not isinstance(posterior, Mapping):
        raise TypeError(
            f"expected posterior as a mapping name -> array, got {type(posterior).__name__}"
        )
    if len(posterior) == 0:
        raise ValueError("expected a posterior with at least one variable, got an empty mapping")
    post, leading, ref = _check_group("posterior", posterior, None, None)
    stats: dict[str, np.ndarray] = {}
    if sample_stats:
        stats, _, _ = _check_group("sample_stats", sample_stats, leading, ref)

    dims: dict[str, list[str]] = {}
    for name, array in [*post.items(), *stats.items()]:
        names = [f"{name}_dim_{i}" for i in range(array.ndim - 2)]
        if dims.setdefault(name, names) != names:
            raise ValueError(
                f"expected {name!r} with the same number of event axes in posterior and "
                f"sample_stats, got {len(dims[name])} and {len(names)}; rename one of them"
            )

    safe = {str(k): _netcdf_safe(v) for k, v in (attrs or {}).items()}
    # ArviZ pops keys from the attrs dicts it is given, so each group gets its own copy.
    kwargs: dict[str, Any] = {"posterior_attrs": dict(safe)}
    if stats:
        kwargs["sample_stats"] = stats
        kwargs["sample_stats_attrs"] = dict(safe)
    with warnings.catch_warnings():
        # ArviZ warns when chains outnumber draws, guessing the axes may be swapped; ours
        # are explicit (chain, draw), and many short chains are this library's normal case.
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        return az.from_dict(posterior=post, dims=dims, attrs=dict(safe), index_origin=0, **kwargs)


def write_netcdf(idata: az.InferenceData, path: str | os.PathLike[str]) -> None:
    """Write InferenceData as NetCDF atomically: to a temporary file, then renamed over
    ``path``, so an interrupted write never leaves half a file.

    Example:
        >>> import tempfile
        >>> idata = to_inference_data({"x": np.zeros((2, 3))})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_netcdf(idata, Path(tmp, "draws.nc"))
        ...     read_netcdf(Path(tmp, "draws.nc")).posterior["x"].shape
        (2, 3)
    """
    atomic_write(Path(path), lambda tmp: idata.to_netcdf(str(tmp)))


def read_netcdf(path: str | os.PathLike[str]) -> az.InferenceData:
    """Read InferenceData written by :func:`write_netcdf` (or ``pyro-flowebm sample``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a NetCDF file of draws, got {path}: no such file")
    return az.from_netcdf(str(path))  # read eagerly: the file is closed afterwards


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
        >>> import numpy as np
        >>> modes = np.array([[0.0, 0.0], [5.0, 5.0]])
        >>> assign_modes(np.array([[0.1, -0.2], [4.0, 6.0], [3.0, 3.0]]), modes)
        array([0, 1, 1])
    """
    points = _to_numpy(x)
    centres = _to_numpy(modes)
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


@dataclass(frozen=True, eq=False)
class MixingSummary:
    """Result of :func:`mixing_summary`.

    Attributes:
        table: ArviZ's ``az.summary(..., kind="all")`` table (mean, sd, hdi, mcse_mean,
            mcse_sd, ess_bulk, ess_tail, r_hat), one row per scalar component.
        occupancy: Chains × modes table of the fraction of each chain's draws nearest to
            each mode, or ``None`` without modes.
        modes_visited: Number of distinct modes each chain visited, shape ``(chain,)``.
        transitions: Number of draw-to-draw changes of the nearest-mode label per chain,
            shape ``(chain,)``.
        mode_rhat: Maximum over modes of the R-hat of the one-hot mode indicator (see
            :func:`mixing_summary`); ``inf`` when chains never leave distinct modes, ``nan``
            when no indicator varies.
        unvisited: Modes that no chain visited.
    """

    table: pd.DataFrame
    occupancy: pd.DataFrame | None = None
    modes_visited: np.ndarray | None = None
    transitions: np.ndarray | None = None
    mode_rhat: float | None = None
    unvisited: list[int] | None = None

    @property
    def total_transitions(self) -> int | None:
        """Mode transitions summed over chains, or ``None`` without modes."""
        return None if self.transitions is None else int(np.sum(self.transitions))

    def __str__(self) -> str:
        columns = [c for c in _REPORT_COLUMNS if c in self.table.columns]
        lines = ["Posterior summary (ArviZ):", self.table[columns].to_string()]
        if self.occupancy is None:
            return "\n".join(lines)
        n_modes = self.occupancy.shape[1]
        lines += [
            "",
            f"Mode coverage ({n_modes} modes):",
            "fraction of draws nearest to each mode:",
            self.occupancy.to_string(float_format=lambda v: f"{v:.3f}"),
            f"modes visited per chain: {[int(v) for v in self.modes_visited]}",
            f"mode transitions per chain: {[int(v) for v in self.transitions]} "
            f"(total {self.total_transitions})",
            f"mode R-hat (max over one-hot mode indicators): {_fmt(self.mode_rhat)}",
        ]
        if self.unvisited:
            lines.append(f"modes never visited by any chain: {self.unvisited}")
        else:
            lines.append("every mode was visited by at least one chain.")
        if self.mode_rhat > _RHAT_THRESHOLD:
            lines.append(
                f"mode R-hat above {_RHAT_THRESHOLD}: the chains disagree on the mode weights."
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serializable; NaN and inf stay floats).

        Example:
            >>> import json
            >>> import numpy as np
            >>> x = np.random.default_rng(0).normal(size=(2, 50, 2))
            >>> s = mixing_summary(to_inference_data({"x": x}), modes=np.zeros((1, 2)))
            >>> d = s.to_dict()
            >>> d["unvisited"], d["total_transitions"]
            ([], 0)
            >>> isinstance(json.dumps(d), str)
            True
        """
        table = {
            str(row): {str(col): float(val) for col, val in values.items()}
            for row, values in self.table.to_dict(orient="index").items()
        }
        out: dict[str, Any] = {"table": table}
        if self.occupancy is not None:
            out["occupancy"] = self.occupancy.to_numpy(dtype=float).tolist()
            out["modes_visited"] = [int(v) for v in self.modes_visited]
            out["transitions"] = [int(v) for v in self.transitions]
            out["total_transitions"] = self.total_transitions
            out["mode_rhat"] = float(self.mode_rhat)
            out["unvisited"] = [int(k) for k in self.unvisited]
        return out


def _posterior_values(idata: az.InferenceData, var_name: str) -> np.ndarray:
    """Values of one posterior variable with axes ordered (chain, draw, ...)."""
    if "posterior" not in idata.groups():
        raise ValueError(f"expected InferenceData with a posterior group, got {idata.groups()}")
    names = list(idata.posterior.data_vars)
    if var_name not in names:
        raise ValueError(
            f"expected posterior variable {var_name!r}, got variables {names}; pass var_name="
        )
    return idata.posterior[var_name].transpose("chain", "draw", ...).to_numpy()


def _indicator_rhat(indicator: np.ndarray) -> float:
    """ArviZ's rank-normalized split R-hat of a (chain, draw) 0/1 array."""
    with warnings.catch_warnings():
        # A chain half that never leaves (or never enters) a mode has zero within-chain
        # variance: ArviZ divides by it and returns inf, the right answer for chains stuck
        # in different modes; a tie at the median makes the folded (tail) term 0/0 and
        # ArviZ then keeps the bulk value. numpy reports both divisions as RuntimeWarnings.
        warnings.filterwarnings("ignore", "divide by zero encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        return float(az.rhat(indicator))


def mixing_summary(
    idata: az.InferenceData,
    modes: ArrayLike | None = None,
    *,
    labels: ArrayLike | None = None,
    num_modes: int | None = None,
    var_name: str = "x",
    var_names: str | list[str] | None = None,
) -> MixingSummary:
    """ArviZ summary table plus, when mode centres are known, mode coverage of every chain.

    R-hat and ESS of the coordinates can look perfect while every chain sits in the same
    mode, so with ``modes`` each draw of ``var_name`` gets the label of its nearest centre
    (:func:`assign_modes`) and the summary reports per-chain occupancy, modes visited,
    label changes, the modes no chain visited and the mode R-hat

    .. math::

        \\hat R_{\\text{mode}} = \\max_k \\hat R\\big(\\mathbb 1[\\ell_{c,t} = k]\\big),

    ArviZ's rank-normalized split R-hat of each one-hot indicator (Vehtari et al., 2021).
    The label's integer values are arbitrary (renumbering the modes would change an R-hat of
    the label itself), while each indicator is a genuine scalar function of the state whose
    mean is that mode's weight. Indicators constant over all chains and draws have no R-hat
    and are left out; if none varies, ``mode_rhat`` is NaN. Chains that each stay in
    different modes give ``inf``.

    Where modes have no centres (the digit classes of image chains), pass the labels
    themselves: ``labels`` of shape ``(chain, draw)``, e.g. a classifier's class of each
    draw (:mod:`pyro_flowebm.probe`), and the same section follows.

    Args:
        idata: InferenceData with a posterior group, e.g. from :func:`to_inference_data`.
        modes: Mode centres of shape ``(K, d)``; enables the mode section.
        labels: Mode labels ``0..K-1`` of every draw, shape ``(chain, draw)``; enables the
            mode section instead of ``modes``.
        num_modes: ``K`` for ``labels`` (default: the largest label plus one).
        var_name: Posterior variable of shape ``(chain, draw, d)`` compared with ``modes``.
        var_names: Variables in the ArviZ table (default: all posterior variables).

    Returns:
        A :class:`MixingSummary`; ``print`` it for a plain-text report.

    Raises:
        ValueError: when ``var_name`` is not in the posterior or does not have shape
            ``(chain, draw, d)`` matching ``modes``.

    References:
        Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021), Rank-normalization, folding,
        and localization: an improved R-hat, arXiv:1903.08008.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> modes = np.array([[-4.0, 0.0], [4.0, 0.0]])
        >>> stuck = modes[[0, 1]][:, None, :] + 0.1 * rng.normal(size=(2, 200, 2))
        >>> s = mixing_summary(to_inference_data({"x": stuck}), modes)
        >>> s.modes_visited.tolist(), s.transitions.tolist(), s.mode_rhat > 1.5
        ([1, 1], [0, 0], True)
    """
    if modes is not None and labels is not None:
        raise ValueError("expected modes or labels, got both")
    table = az.summary(idata, var_names=var_names, kind="all")
    if modes is None and labels is None:
        return MixingSummary(table=table)

    if labels is not None:
        labels = _to_numpy(labels)
        sizes = (idata.posterior.sizes["chain"], idata.posterior.sizes["draw"])
        if labels.shape != sizes or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"expected integer labels of shape (chain, draw) = {sizes}, got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        top = "num_modes - 1" if num_modes is None else num_modes - 1
        if labels.min() < 0 or (num_modes is not None and labels.max() >= num_modes):
            raise ValueError(f"expected labels in 0..{top}, got {labels.min()}..{labels.max()}")
        n_modes = num_modes if num_modes is not None else int(labels.max()) + 1
    else:
        centres = _to_numpy(modes)
        values = _posterior_values(idata, var_name)
        if centres.ndim != 2 or values.ndim != 3 or values.shape[-1] != centres.shape[-1]:
            raise ValueError(
                f"expected posterior {var_name!r} of shape (chain, draw, d) and modes of "
                f"shape (K, d) with the same d, got {tuple(values.shape)} and "
                f"{tuple(centres.shape)}"
            )
        labels = assign_modes(values, centres)
        n_modes = centres.shape[0]
    n_chains, n_draws = labels.shape

    counts = np.stack([np.bincount(row, minlength=n_modes) for row in labels])
    chain_coords = idata.posterior["chain"].to_numpy()
    occupancy = pd.DataFrame(
        counts / n_draws,
        index=pd.Index(chain_coords, name="chain"),
        columns=pd.Index(range(n_modes), name="mode"),
    )
    visited = (counts > 0).sum(axis=1)
    transitions = (np.diff(labels, axis=1) != 0).sum(axis=1)
    unvisited = [int(k) for k in np.flatnonzero(counts.sum(axis=0) == 0)]

    rhats = []
    for k in range(n_modes):
        indicator = (labels == k).astype(np.float64)
        if indicator.min() == indicator.max():
            continue  # constant everywhere: R-hat is 0/0
        rhat = _indicator_rhat(indicator)
        if not math.isnan(rhat):
            rhats.append(rhat)
    mode_rhat = max(rhats) if rhats else math.nan

    return MixingSummary(
        table=table,
        occupancy=occupancy,
        modes_visited=visited,
        transitions=transitions,
        mode_rhat=mode_rhat,
        unvisited=unvisited,
    )


def _eval_log_density(log_density: Callable[[Tensor], Tensor], points: np.ndarray) -> np.ndarray:
    """Evaluate a torch log density on points of shape (m, 2), without gradients."""
    with torch.no_grad():
        result = _to_numpy(log_density(torch.from_numpy(points).to(torch.get_default_dtype())))
    if result.size != points.shape[0]:
        raise ValueError(
            f"expected log_density to return shape ({points.shape[0]},) for points of "
            f"shape {points.shape}, got shape {result.shape}"
        )
    return result.astype(np.float64).reshape(-1)


def plot_chains(
    idata: az.InferenceData,
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
        >>> ax = plot_chains(to_inference_data({"x": x}), log_density=lambda p: -(p**2).sum(1))
        >>> len(ax.lines)
        3
        >>> import matplotlib.pyplot as plt
        >>> plt.close(ax.figure)
    """
    import matplotlib.pyplot as plt

    values = _posterior_values(idata, var_name)
    if values.ndim != 3 or values.shape[-1] != 2:
        raise ValueError(
            f"expected posterior {var_name!r} of shape (chain, draw, 2) to plot, "
            f"got shape {tuple(values.shape)}"
        )
    n_chains, n_draws, _ = values.shape
    points = None
    if data is not None:
        points = _to_numpy(data)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"expected data of shape (n, 2), got shape {tuple(points.shape)}")

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

    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 5.0))

    if log_density is not None:
        gx, gy = np.meshgrid(
            np.linspace(xmin, xmax, _GRID_SIZE), np.linspace(ymin, ymax, _GRID_SIZE)
        )
        grid = np.stack([gx.ravel(), gy.ravel()], axis=-1)
        logp = _eval_log_density(log_density, grid).reshape(gx.shape)
        finite = np.isfinite(logp)
        if finite.any():
            # Clip far below the maximum so the modes' shapes, not the tails, get the levels.
            top = logp[finite].max()
            shown = np.clip(np.where(finite, logp, -np.inf), top - _LOG_DENSITY_RANGE, top)
            ax.contourf(gx, gy, shown, levels=12, cmap="Greys", alpha=0.5, zorder=0)

    if points is not None:
        ax.scatter(points[:, 0], points[:, 1], s=2, color="0.5", alpha=0.4, lw=0, zorder=1)

    for c in range(n_chains):
        ax.plot(
            values[c, :, 0],
            values[c, :, 1],
            "-",
            marker=".",
            markersize=2,
            linewidth=0.5,
            alpha=0.8,
            color=f"C{c % 10}",
            label=f"chain {c}",
            zorder=2,
        )
    ax.scatter(
        values[:, 0, 0],
        values[:, 0, 1],
        marker="*",
        s=80,
        c=[f"C{c % 10}" for c in range(n_chains)],
        edgecolors="black",
        linewidths=0.8,
        zorder=3,
        label="first draw",
    )
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
    images = np.clip(_to_numpy(images).astype(np.float64), 0.0, 1.0)
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
    idata: az.InferenceData,
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
    values = _posterior_values(idata, var_name)
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


# The report builds on everything above; imported last so that it can import those names.
from .html_report import (  # noqa: E402
    FALSE_CONVERGENCE,
    MIXING,
    NOT_MIXING,
    Report,
    Verdict,
    report,
    verdict,
)
