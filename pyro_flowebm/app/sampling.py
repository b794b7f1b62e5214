"""Sampling a trained run into a NetCDF file of ArviZ InferenceData."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..infer import sample_ebm
from ..io import write_netcdf
from .config import default_of
from .training import load_run

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["sample_run"]


def sample_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sampler: str = default_of(sample_ebm, "sampler"),
    num_chains: int = default_of(sample_ebm, "num_chains"),
    num_samples: int = default_of(sample_ebm, "num_samples"),
    warmup_steps: int = default_of(sample_ebm, "warmup_steps"),
    thin: int = default_of(sample_ebm, "thin"),
    seed: int | None = default_of(sample_ebm, "seed"),
    device: str | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> InferenceData:
    """Sample a run's FlowEBM with a preset of :func:`~pyro_flowebm.infer.sample_ebm` and
    write the draws as NetCDF (atomically) to ``out``.

    Args:
        run_dir: the run.
        out: a ``.nc`` file; an existing one is replaced only with ``overwrite``.
        sampler: the preset (see :func:`~pyro_flowebm.infer.sample_ebm`), and its counts,
            thinning and seed.
        num_chains: number of chains.
        num_samples: kept draws per chain.
        warmup_steps: warm-up iterations.
        thin: keep every ``thin``-th draw.
        seed: the seed of the draws.
        device: where to sample (default: the run's device).
        overwrite: replace an existing ``out``.
        progress_bar: show the sampler's progress.

    Returns:
        The InferenceData written.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is not set.
        ValueError: ``out`` is not a ``.nc`` file.
    """
    out = Path(out)
    if out.suffix != ".nc":
        raise ValueError(f"expected a .nc file for --out, got {out}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"expected a new --out file, got existing {out}; pass --overwrite")
    ebm = load_run(run_dir, device=device)
    idata = sample_ebm(
        ebm, sampler, num_chains, num_samples, warmup_steps,
        thin=thin, seed=seed, progress_bar=progress_bar,
    )  # fmt: skip
    write_netcdf(idata, out)
    return idata
