"""Mixing summaries: ArviZ's table, and the coverage of known modes by every chain."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pandas import DataFrame, Index

from ..core import to_numpy
from ..io import arviz
from ..metrics import assign_modes
from ..metrics.points import ArrayLike

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["RHAT_FLAG", "MixingSummary", "fmt_number", "mixing_summary", "posterior_values"]

# Columns of the ArviZ summary shown by ``MixingSummary.__str__``.
_REPORT_COLUMNS = ("mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat")
# Vehtari et al. (2021) recommend R-hat < 1.01 before trusting a summary.
RHAT_FLAG = 1.01


def fmt_number(value: float) -> str:
    """Three decimals, or three significant digits for huge values (R-hat of stuck chains).

    Example:
        >>> fmt_number(1.00421), fmt_number(4.6e15)
        ('1.004', '4.6e+15')
    """
    return f"{value:.3f}" if abs(value) < 1e3 or not math.isfinite(value) else f"{value:.3g}"


def posterior_values(idata: InferenceData, var_name: str) -> np.ndarray:
    """Values of one posterior variable with axes ordered (chain, draw, ...).

    Example:
        >>> from pyro_flowebm.io import to_inference_data
        >>> posterior_values(to_inference_data({"x": np.zeros((2, 5, 3))}), "x").shape
        (2, 5, 3)
    """
    if "posterior" not in idata.groups():
        raise ValueError(f"expected InferenceData with a posterior group, got {idata.groups()}")
    names = list(idata.posterior.data_vars)
    if var_name not in names:
        raise ValueError(
            f"expected posterior variable {var_name!r}, got variables {names}; pass var_name="
        )
    return idata.posterior[var_name].transpose("chain", "draw", ...).to_numpy()


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

    table: DataFrame
    occupancy: DataFrame | None = None
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
            f"mode R-hat (max over one-hot mode indicators): {fmt_number(self.mode_rhat)}",
        ]
        if self.unvisited:
            lines.append(f"modes never visited by any chain: {self.unvisited}")
        else:
            lines.append("every mode was visited by at least one chain.")
        if self.mode_rhat > RHAT_FLAG:
            lines.append(f"mode R-hat above {RHAT_FLAG}: the chains disagree on the mode weights.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serializable; NaN and inf stay floats).

        Example:
            >>> import json
            >>> from pyro_flowebm.io import to_inference_data
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


def _indicator_rhat(indicator: np.ndarray) -> float:
    """ArviZ's rank-normalized split R-hat of a (chain, draw) 0/1 array."""
    with warnings.catch_warnings():
        # A chain half that never leaves (or never enters) a mode has zero within-chain
        # variance: ArviZ divides by it and returns inf, the right answer for chains stuck
        # in different modes; a tie at the median makes the folded (tail) term 0/0 and
        # ArviZ then keeps the bulk value. numpy reports both divisions as RuntimeWarnings.
        warnings.filterwarnings("ignore", "divide by zero encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        return float(arviz().rhat(indicator))


def _given_labels(
    idata: InferenceData, labels: ArrayLike, num_modes: int | None
) -> tuple[np.ndarray, int]:
    """Labels ``(chain, draw)`` given by the caller, checked, and their number of modes."""
    labels = to_numpy(labels)
    sizes = (idata.posterior.sizes["chain"], idata.posterior.sizes["draw"])
    if labels.shape != sizes or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"expected integer labels of shape (chain, draw) = {sizes}, got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    top = "num_modes - 1" if num_modes is None else num_modes - 1
    if labels.min() < 0 or (num_modes is not None and labels.max() >= num_modes):
        raise ValueError(f"expected labels in 0..{top}, got {labels.min()}..{labels.max()}")
    return labels, num_modes if num_modes is not None else int(labels.max()) + 1


def _nearest_modes(idata: InferenceData, modes: ArrayLike, var_name: str) -> tuple[np.ndarray, int]:
    """The nearest of ``modes`` to every draw of ``var_name``, and the number of modes."""
    centres = to_numpy(modes)
    values = posterior_values(idata, var_name)
    if centres.ndim != 2 or values.ndim != 3 or values.shape[-1] != centres.shape[-1]:
        raise ValueError(
            f"expected posterior {var_name!r} of shape (chain, draw, d) and modes of "
            f"shape (K, d) with the same d, got {tuple(values.shape)} and "
            f"{tuple(centres.shape)}"
        )
    return assign_modes(values, centres), centres.shape[0]


def _mode_rhat(labels: np.ndarray, n_modes: int) -> float:
    """The largest R-hat of the one-hot mode indicators that vary (NaN if none does)."""
    rhats = []
    for k in range(n_modes):
        indicator = (labels == k).astype(np.float64)
        if indicator.min() == indicator.max():
            continue  # constant everywhere: R-hat is 0/0
        rhat = _indicator_rhat(indicator)
        if not math.isnan(rhat):
            rhats.append(rhat)
    return max(rhats) if rhats else math.nan


def mixing_summary(
    idata: InferenceData,
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
        >>> from pyro_flowebm.io import to_inference_data
        >>> rng = np.random.default_rng(1)
        >>> modes = np.array([[-4.0, 0.0], [4.0, 0.0]])
        >>> stuck = modes[[0, 1]][:, None, :] + 0.1 * rng.normal(size=(2, 200, 2))
        >>> s = mixing_summary(to_inference_data({"x": stuck}), modes)
        >>> s.modes_visited.tolist(), s.transitions.tolist(), s.mode_rhat > 1.5
        ([1, 1], [0, 0], True)
    """
    if modes is not None and labels is not None:
        raise ValueError("expected modes or labels, got both")
    table = arviz().summary(idata, var_names=var_names, kind="all")
    if modes is None and labels is None:
        return MixingSummary(table=table)

    if labels is not None:
        labels, n_modes = _given_labels(idata, labels, num_modes)
    else:
        labels, n_modes = _nearest_modes(idata, modes, var_name)
    counts = np.stack([np.bincount(row, minlength=n_modes) for row in labels])
    occupancy = DataFrame(
        counts / labels.shape[1],
        index=Index(idata.posterior["chain"].to_numpy(), name="chain"),
        columns=Index(range(n_modes), name="mode"),
    )
    visited = (counts > 0).sum(axis=1)
    transitions = (np.diff(labels, axis=1) != 0).sum(axis=1)
    unvisited = [int(k) for k in np.flatnonzero(counts.sum(axis=0) == 0)]
    mode_rhat = _mode_rhat(labels, n_modes)
    return MixingSummary(
        table=table,
        occupancy=occupancy,
        modes_visited=visited,
        transitions=transitions,
        mode_rhat=mode_rhat,
        unvisited=unvisited,
    )
