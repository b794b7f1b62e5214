"""The verdict on a run's chains: mixing, not mixing, or false convergence, with the reasons."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .summary import RHAT_FLAG, MixingSummary

__all__ = [
    "ESS_PER_CHAIN",
    "FALSE_CONVERGENCE",
    "MIXING",
    "NOT_MIXING",
    "Verdict",
    "low_ess_rows",
    "num_text",
    "per_chain_text",
    "verdict",
]

MIXING = "mixing"
NOT_MIXING = "not mixing"
FALSE_CONVERGENCE = "false convergence"

# The verdict's R-hat bound. Cells are flagged above 1.01 (Vehtari et al., 2021), but with
# ~100 effective draws per chain the R-hat of well-mixed chains fluctuates by about 0.01: the
# latent eight-Gaussians run of examples/eight_gaussians.py (4 x 200 draws, every chain in all
# 8 modes, 628 mode switches) has a mode R-hat of 1.011, its data-space twin 4.6e15.
_VERDICT_RHAT = 1.05
# Vehtari et al. (2021): bulk and tail ESS of at least 100 per chain before trusting R-hat.
ESS_PER_CHAIN = 100


@dataclass(frozen=True)
class Verdict:
    """Whether a run's chains mix, with the reasons.

    Attributes:
        label: ``"mixing"``, ``"not mixing"`` or ``"false convergence"``.
        reasons: One sentence per check that decided the label.
    """

    label: str
    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"verdict: {self.label}"


def per_chain_text(values: Any) -> str:
    """Per-chain counts in a line: the list for up to 8 chains, else their range."""
    ints = [int(v) for v in values]
    if len(ints) <= 8:
        return str(ints)
    return f"{min(ints)}-{max(ints)} (median {int(np.median(ints))}) over {len(ints)} chains"


def _rhat_reasons(summary: MixingSummary, rhat_threshold: float) -> tuple[bool, list[str]]:
    """Whether the R-hats (of the table and of the modes) say the chains disagree, and why."""
    table = summary.table
    reasons: list[str] = []
    disagree = False
    rhat = table["r_hat"].to_numpy(dtype=float) if "r_hat" in table else np.array([])
    if np.isnan(rhat).all():
        disagree = True
        reasons.append("no R-hat could be computed (constant draws, or too few of them)")
    else:
        worst = int(np.nanargmax(rhat))
        name, value = table.index[worst], num_text(rhat[worst])
        if rhat[worst] > rhat_threshold:
            disagree = True
            reasons.append(f"R-hat {value} > {rhat_threshold} for {name}: the chains disagree")
        elif rhat[worst] > RHAT_FLAG:
            reasons.append(
                f"R-hat {value} for {name}: above {RHAT_FLAG} but within {rhat_threshold}, "
                "borderline; more draws would settle it"
            )
        else:
            reasons.append(f"every R-hat <= {RHAT_FLAG} (largest {value})")
    mode_rhat = summary.mode_rhat
    if mode_rhat is not None and mode_rhat > rhat_threshold:
        disagree = True
        reasons.append(
            f"mode R-hat {num_text(mode_rhat)} > {rhat_threshold}: the chains disagree on the "
            "mode weights"
        )
    elif mode_rhat is not None and mode_rhat > RHAT_FLAG:
        reasons.append(
            f"mode R-hat {num_text(mode_rhat)}: above {RHAT_FLAG} but within "
            f"{rhat_threshold}, borderline"
        )
    return disagree, reasons


def verdict(
    summary: MixingSummary,
    *,
    num_chains: int | None = None,
    rhat_threshold: float = _VERDICT_RHAT,
) -> Verdict:
    """Decide from a :class:`MixingSummary` whether the chains mix.

    - ``not mixing``: some R-hat of the ArviZ table, or the mode R-hat, exceeds
      ``rhat_threshold`` (the chains disagree), or no R-hat could be computed;
    - ``false convergence``: every R-hat is fine, but modes are known and some mode was
      visited by no chain: the chains agree because they all sit in the same subset;
    - ``mixing``: neither. Without modes, false convergence cannot be detected, and the
      reasons say so.

    Low ESS (below 100 per chain) is reported in the reasons but does not change the label.

    Args:
        summary: From :func:`~pyro_flowebm.diagnostics.mixing_summary`.
        num_chains: Chains behind the summary, for the ESS-per-chain check (default: the
            rows of the occupancy table when modes are known; otherwise ESS is not checked).
        rhat_threshold: R-hat above which the chains disagree. Default 1.05: values between
            1.01 (the table's flag, Vehtari et al., 2021) and this bound are named in the
            reasons as borderline, since R-hat of well-mixed chains with about 100 effective
            draws each fluctuates by about 0.01; pass 1.01 for the strict rule.

    Returns:
        A :class:`Verdict`; ``str(v)`` is its machine-readable line ``"verdict: ..."``.

    Example:
        >>> import numpy as np
        >>> from pyro_flowebm.diagnostics import mixing_summary
        >>> from pyro_flowebm.io import to_inference_data
        >>> rng = np.random.default_rng(0)
        >>> modes = np.array([[-4.0, 0.0], [4.0, 0.0]])
        >>> same = modes[0] + 0.1 * rng.normal(size=(4, 500, 2))  # every chain in mode 0
        >>> str(verdict(mixing_summary(to_inference_data({"x": same}), modes)))
        'verdict: false convergence'
    """
    table = summary.table
    n_chains = num_chains
    if n_chains is None and summary.occupancy is not None:
        n_chains = int(summary.occupancy.shape[0])
    disagree, reasons = _rhat_reasons(summary, rhat_threshold)
    low_ess = low_ess_rows(table, n_chains)
    if low_ess:
        reasons.append(f"ESS below {ESS_PER_CHAIN} per chain for {', '.join(low_ess[:5])}")

    if disagree:
        return Verdict(NOT_MIXING, tuple(reasons))
    if summary.unvisited:
        k = summary.occupancy.shape[1]
        reasons.append(
            f"but no chain visited modes {summary.unvisited} of the {k} known modes: R-hat "
            "agrees only because every chain sits in the same subset of modes"
        )
        return Verdict(FALSE_CONVERGENCE, tuple(reasons))
    if summary.occupancy is None:
        reasons.append("modes unknown: false convergence (all chains in the same mode) not checked")
    else:
        reasons.append(f"all {summary.occupancy.shape[1]} known modes visited")
    return Verdict(MIXING, tuple(reasons))


def num_text(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def low_ess_rows(table: Any, n_chains: int | None) -> list[str]:
    """Rows of the summary table whose bulk or tail ESS is below 100 per chain."""
    if n_chains is None or not {"ess_bulk", "ess_tail"} <= set(table.columns):
        return []
    ess = table[["ess_bulk", "ess_tail"]].to_numpy(dtype=float).min(axis=1)
    low = ess < ESS_PER_CHAIN * n_chains
    return [str(row) for row, flag in zip(table.index, low, strict=True) if flag]
